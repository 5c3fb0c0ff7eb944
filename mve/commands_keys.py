"""``mve keys create|list|delete``: the access keys that sign (SigV4) boto3's calls to mve's HTTP faces.

Each verb is one call on ``mve.client("iam")`` (mve.v1.AccessKeys on the control plane). A table
by default, the boto3-shaped response with ``--json``. ``create`` prints the secret once, with a
warning that it is not shown again, and the lines to put in an AWS credentials file.
"""

from __future__ import annotations

import argparse
import sys

from mve.commands import _guarded, _positive

SECRET_WARNING = (
    "The secret access key is shown only now: it cannot be read back later. Keep it (for instance in an "
    "AWS credentials file); if it is lost, create a new key and delete this one."
)


def credentials_profile(access_key_id: str, secret: str, profile: str = "mve") -> str:
    """An AWS shared-credentials file section for the key (``[profile]`` with the two keys)."""
    return f"[{profile}]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n"


def _iam(args):
    from mve.sdk import client

    return client("iam", address=args.control_plane, **({"timeout": args.timeout} if args.timeout else {}))


def _create(args) -> int:
    from mve.commands_output import plain, print_json

    response = _iam(args).create_access_key(**({"Description": args.description} if args.description else {}))
    key = response["AccessKey"]
    print(f"WARNING: {SECRET_WARNING}", file=sys.stderr)
    if args.json:
        print_json(plain(response))
        return 0
    # Plain lines, never a table: a secret wrapped across lines is a secret mistyped.
    lines = [
        f"AccessKeyId      {key['AccessKeyId']}",
        f"SecretAccessKey  {key['SecretAccessKey']}",
        f"Description      {key.get('Description', '')}",
        f"CreateDate       {key['CreateDate'].isoformat() if 'CreateDate' in key else ''}",
        "",
        "For boto3 or the AWS CLI, add to an AWS credentials file (e.g. ~/.aws/credentials) and use "
        "AWS_PROFILE=mve:",
        "",
        credentials_profile(key["AccessKeyId"], key["SecretAccessKey"]),
    ]
    sys.stdout.write("\n".join(lines))
    return 0


def _list(args) -> int:
    from mve.commands_output import fresh_console, plain, print_json
    from mve.scaling_view import table

    response = _iam(args).list_access_keys()
    if args.json:
        print_json(plain(response))
        return 0
    keys = response["AccessKeyMetadata"]
    if not keys:
        fresh_console().print("no access keys (mve keys create makes one)")
        return 0
    rows = [[k["AccessKeyId"], k.get("Status", ""), k.get("CreateDate", ""), k.get("Description", "")] for k in keys]
    fresh_console().print(table(["AccessKeyId", "Status", "CreateDate", "Description"], rows))
    return 0


def _delete(args) -> int:
    from mve.commands_output import done

    _iam(args).delete_access_key(AccessKeyId=args.access_key_id)
    return done(args, f"deleted access key {args.access_key_id}: requests it signs are refused from now on")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help="control plane address (default $MVE_CONTROL_PLANE or 127.0.0.1:7070)")
    common.add_argument("--json", action="store_true", help="print the boto3-shaped response as JSON")
    common.add_argument("--timeout", type=_positive, default=None, help="deadline of the call in seconds (> 0)")
    return common


def _description(text: str) -> str:
    if len(text) > 256:
        raise argparse.ArgumentTypeError(f"at most 256 characters, got {len(text)}")
    return text


def register(subparsers) -> None:
    """Add ``keys`` and its verbs create, list, delete."""
    common = _common()
    group = subparsers.add_parser(
        "keys",
        help="access keys that sign boto3's calls to the HTTP faces (create, list, delete)",
        description="Access keys for AWS Signature Version 4 on mve's HTTP faces (mve.v1.AccessKeys on the "
        "control plane). Rotate a key by creating the new one, moving clients to it, then deleting the old one.",
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", parents=[common], help="a new key; its secret is printed once",
                              description="Create an access key (CreateAccessKey). The secret is printed "
                              "once and cannot be read back.")
    create.add_argument("--description", type=_description, default="", help="free text, at most 256 characters")
    create.set_defaults(func=_guarded(_create))
    listing = verbs.add_parser("list", parents=[common], help="every key (never a secret)",
                               description="List the access keys (ListAccessKeys): ids, creation times, "
                               "descriptions; never secrets.")
    listing.set_defaults(func=_guarded(_list))
    delete = verbs.add_parser("delete", parents=[common], help="delete a key: what it signs is refused",
                              description="Delete an access key (DeleteAccessKey). Requests it signs are "
                              "refused once the proxies have the next routing table (at once, normally).")
    delete.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    delete.set_defaults(func=_guarded(_delete))
