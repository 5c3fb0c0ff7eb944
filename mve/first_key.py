"""``mve up``'s first access key: made once, kept in ``<data-dir>/credentials`` for boto3.

The file is an AWS shared-credentials file (profile ``mve``, mode 0600), so boto3 and the AWS CLI
read it as they are:

    AWS_SHARED_CREDENTIALS_FILE=.mve/credentials AWS_PROFILE=mve python my_sagemaker_code.py

A later ``mve up`` on the same data dir reuses the key while the control plane still has it; a key
deleted meanwhile (``mve keys delete``) is replaced by a new one and the file rewritten.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

PROFILE = "mve"
FILE_NAME = "credentials"
DESCRIPTION = "made by mve up (data-dir credentials, profile mve)"


@dataclass(frozen=True)
class FirstKey:
    """The key in the data dir's credentials file; `created` when this call made it."""

    access_key_id: str
    secret_access_key: str
    path: Path
    created: bool

    def usage(self) -> str:
        """How to point boto3 (or the AWS CLI) at this key, in a few lines."""
        path = self.path.resolve()
        return (
            f"access key     {self.access_key_id}   (profile {PROFILE} in {path})\n"
            f"  boto3        AWS_SHARED_CREDENTIALS_FILE={path} AWS_PROFILE={PROFILE}\n"
            f"               or boto3.Session(profile_name={PROFILE!r}) with that file"
        )


def credentials_path(data_dir: Path) -> Path:
    """``<data-dir>/credentials``."""
    return Path(data_dir) / FILE_NAME


def read_credentials(path: Path) -> tuple[str, str] | None:
    """(access key id, secret) of the ``mve`` profile in `path`, or None when it has none."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error:
        return None
    if not parser.has_section(PROFILE):
        return None
    key_id = parser.get(PROFILE, "aws_access_key_id", fallback="").strip()
    secret = parser.get(PROFILE, "aws_secret_access_key", fallback="").strip()
    return (key_id, secret) if key_id and secret else None


def write_credentials(path: Path, access_key_id: str, secret: str) -> None:
    """Write (or replace) the ``mve`` profile in `path`, keeping other profiles; mode 0600 throughout."""
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        try:
            parser.read(path)
        except configparser.Error:
            parser = configparser.ConfigParser(interpolation=None)  # unreadable: replaced whole
    if not parser.has_section(PROFILE):
        parser.add_section(PROFILE)
    parser.set(PROFILE, "aws_access_key_id", access_key_id)
    parser.set(PROFILE, "aws_secret_access_key", secret)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            parser.write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)  # an existing temporary file keeps its mode through O_CREAT
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def ensure_first_key(data_dir: Path, control_plane_address: str, *, timeout: float = 30.0) -> FirstKey:
    """The data dir's key: the one in its credentials file while the control plane has it, else a new one.

    It asks with the data dir's own credentials: its admin certificate and token when ``mve up
    --secure`` made it secure, else plaintext; whatever the caller's environment or working directory
    holds. Raises the SDK's errors (ClientError, EndpointConnectionError) when the control plane
    cannot be asked, and ValueError for unreadable TLS or token files.
    """
    from mve.sdk.factory import client_with_security
    from mve.sdk.security import data_dir_security

    path = credentials_path(data_dir)
    security = data_dir_security(data_dir)
    with client_with_security("iam", control_plane_address, security, timeout=timeout) as iam:
        existing = read_credentials(path) if path.exists() else None
        if existing is not None:
            known = {k["AccessKeyId"] for k in iam.list_access_keys()["AccessKeyMetadata"]}
            if existing[0] in known:
                return FirstKey(existing[0], existing[1], path, created=False)
        key = iam.create_access_key(Description=DESCRIPTION)["AccessKey"]
    write_credentials(path, key["AccessKeyId"], key["SecretAccessKey"])
    return FirstKey(key["AccessKeyId"], key["SecretAccessKey"], path, created=True)


__all__ = ["FirstKey", "credentials_path", "ensure_first_key", "read_credentials", "write_credentials"]
