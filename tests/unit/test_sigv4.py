"""SigV4 verification (mve.sigv4) against requests signed by botocore itself."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mve import sigv4
from mve.sigv4 import AuthError, SigningKeys, date_key, verify

KEY_ID = "MVEKTESTTESTTEST0001"
SECRET = "s3cr3t/with+chars=" + "x" * 22
OTHER_SECRET = "y" * 40


class Keys:
    """DateKeys over a dict of secrets, deriving date keys as the control plane does."""

    def __init__(self, secrets: dict[str, str]):
        self.secrets = secrets
        self.asked: list[tuple[str, str]] = []

    def date_key(self, access_key_id: str, date: str) -> bytes | None:
        self.asked.append((access_key_id, date))
        secret = self.secrets.get(access_key_id)
        return date_key(secret, date) if secret is not None else None


KEYS = Keys({KEY_ID: SECRET})


def sign(method, url, body=b"", headers=None, *, service="sagemaker", region="us-east-1", key_id=KEY_ID,
         secret=SECRET, content_sha=False):
    """(url, headers, body) as botocore's SigV4Auth signs them."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if content_sha:
        request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(key_id, secret), service, region).add_auth(request)
    received = {name: value for name, value in request.headers.items()}
    received.setdefault("Host", url.split("/")[2])  # what the HTTP client adds on the wire
    return url, received, body


def check(method, signed, **kwargs):
    url, headers, body = signed
    return verify(method, url, headers, body, kwargs.pop("keys", KEYS), **kwargs)


def refused(method, signed, **kwargs) -> AuthError:
    with pytest.raises(AuthError) as info:
        check(method, signed, **kwargs)
    return info.value


JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.DescribeEndpoint"}


def json_post():
    return sign("POST", "http://127.0.0.1:7071/", b'{"EndpointName": "ep"}', JSON_HEADERS)


# ---------------------------------------------------------------- valid requests


def test_json_post_passes_and_names_the_key():
    assert check("POST", json_post()) == KEY_ID


def test_rest_post_with_path_params_and_special_characters_passes():
    signed = sign(
        "POST", "http://localhost:8081/endpoints/my-ep%20%C3%A9%2Fx/invocations", b"1,2,3",
        {"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "a=b;  c=d",
         "X-Amzn-SageMaker-Target-Variant": "v 1"},
    )
    assert check("POST", signed) == KEY_ID


def test_get_with_query_passes():
    signed = sign("GET", "http://127.0.0.1:7071/metrics?b=2&a=1&a=0&empty=&flag&sp=a%20b")
    assert check("GET", signed) == KEY_ID


def test_with_content_sha256_header_passes():
    assert check("POST", sign("POST", "http://h:1/x", b"body", content_sha=True)) == KEY_ID


def test_any_region_and_each_signing_service_pass():
    for service in ("sagemaker", "application-autoscaling", "monitoring"):
        for region in ("us-east-1", "eu-west-3", "local"):
            assert check("POST", sign("POST", "http://h:1/", b"{}", service=service, region=region)) == KEY_ID


def test_header_sent_twice_is_checked_with_both_values():
    url, headers, body = sign("POST", "http://h:1/", b"{}", {"X-Amz-Target": "SageMaker.ListEndpoints"})

    class Multi(dict):
        def items(self):
            return list(super().items()) + [("X-Extra", "unsigned, ignored")]

    assert verify("POST", url, Multi(headers), body, KEYS) == KEY_ID


def test_unsigned_extra_headers_do_not_matter():
    url, headers, body = json_post()
    headers = {**headers, "Accept-Encoding": "identity", "User-Agent": "anything", "Content-Length": "22"}
    assert verify("POST", url, headers, body, KEYS) == KEY_ID


def test_header_names_are_case_insensitive():
    url, headers, body = json_post()
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify("POST", url, lowered, body, KEYS) == KEY_ID


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "tamper",
    [
        lambda u, h, b: (u, h, b + b" "),
        lambda u, h, b: (u, {**h, "X-Amz-Target": "SageMaker.DeleteEndpoint"}, b),
        lambda u, h, b: (u, {**h, "Content-Type": "application/json"}, b),
        lambda u, h, b: (u.replace("/endpoints/a/", "/endpoints/b/"), h, b),
        lambda u, h, b: (u + "?x=1", h, b),
        lambda u, h, b: (u, {**h, "Host": "other:7071"}, b),
    ],
    ids=["body", "target", "content-type", "path", "query", "host"],
)
def test_tampered_request_is_invalid_signature(tamper):
    signed = sign("POST", "http://127.0.0.1:7071/endpoints/a/invocations", b'{"a": 1}', JSON_HEADERS)
    error = refused("POST", tamper(*signed))
    assert (error.code, error.http_status) == ("InvalidSignatureException", 403)
    assert error.message.startswith("The request signature we calculated does not match")


def test_tampered_query_value_is_invalid_signature():
    url, headers, body = sign("GET", "http://h:1/x?a=1&b=2")
    assert refused("GET", (url.replace("b=2", "b=3"), headers, body)).code == "InvalidSignatureException"


def test_other_method_is_invalid_signature():
    url, headers, body = sign("GET", "http://h:1/x")
    with pytest.raises(AuthError) as info:
        verify("DELETE", url, headers, body, KEYS)
    assert info.value.code == "InvalidSignatureException"


def test_wrong_secret_is_invalid_signature():
    assert refused("POST", sign("POST", "http://h:1/", b"{}", secret=OTHER_SECRET)).code == "InvalidSignatureException"


def test_content_sha256_header_must_match_the_body():
    url, headers, body = sign("POST", "http://h:1/x", b"body", content_sha=True)
    error = refused("POST", (url, headers, b"other"))
    assert error.code == "InvalidSignatureException"
    assert "x-amz-content-sha256" in error.message


def test_unsigned_payload_is_refused():
    url, headers, body = sign("POST", "http://h:1/x", b"body", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    error = refused("POST", (url, headers, body))
    assert (error.code, error.http_status) == ("IncompleteSignatureException", 400)


def test_a_path_the_canonical_form_would_rewrite_is_refused():
    url, headers, body = sign("POST", "http://h:1/endpoints/b/../a/invocations", b"{}")
    assert refused("POST", (url, headers, body)).code == "IncompleteSignatureException"


def test_a_malformed_signature_value_is_invalid_signature():
    url, headers, body = json_post()
    headers["Authorization"] = headers["Authorization"].rsplit("=", 1)[0] + "=NOT-HEX"
    assert refused("POST", (url, headers, body)).code == "InvalidSignatureException"


# ---------------------------------------------------------------- keys


def test_unknown_key_is_unrecognized_client():
    error = refused("POST", sign("POST", "http://h:1/", b"{}", key_id="MVEKUNKNOWNUNKNOWN00"))
    assert (error.code, error.http_status) == ("UnrecognizedClientException", 403)
    assert error.message == "The security token included in the request is invalid."


def test_the_date_key_is_asked_for_the_scope_date():
    keys = Keys({KEY_ID: SECRET})
    url, headers, body = json_post()
    verify("POST", url, headers, body, keys)
    assert keys.asked == [(KEY_ID, headers["X-Amz-Date"][:8])]


def test_a_session_token_is_unrecognized():
    request = AWSRequest(method="POST", url="http://h:1/", data=b"{}")
    SigV4Auth(Credentials(KEY_ID, SECRET, token="session"), "sagemaker", "us-east-1").add_auth(request)
    headers = {**dict(request.headers.items()), "Host": "h:1"}
    with pytest.raises(AuthError) as info:
        verify("POST", "http://h:1/", headers, b"{}", KEYS)
    assert info.value.code == "UnrecognizedClientException"


def test_date_key_matches_botocore_derivation():
    day = "20240229"
    signer = SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1")
    expected = signer._sign(f"AWS4{SECRET}".encode(), day)
    assert date_key(SECRET, day) == expected


def test_signing_keys_from_table():
    from mve._proto import control_pb2 as pb

    table = pb.RoutingTable(
        auth_required=True,
        signing_keys=[pb.SigningKey(access_key_id=KEY_ID, date="20240101", date_key=date_key(SECRET, "20240101"))],
    )
    keys = SigningKeys.from_table(table)
    assert keys.auth_required
    assert keys.date_key(KEY_ID, "20240101") == date_key(SECRET, "20240101")
    assert keys.date_key(KEY_ID, "20240102") is None
    assert keys.access_key_ids == {KEY_ID}
    assert sigv4.NO_KEYS.auth_required and sigv4.NO_KEYS.date_key(KEY_ID, "20240101") is None
    assert not sigv4.AUTH_OFF.auth_required


# ---------------------------------------------------------------- missing or malformed pieces


def test_no_authorization_is_missing_authentication_token():
    url, headers, body = json_post()
    del headers["Authorization"]
    error = refused("POST", (url, headers, body))
    assert (error.code, error.http_status, error.message) == (
        "MissingAuthenticationTokenException", 403, "Missing Authentication Token",
    )
    assert error.query_code == "MissingAuthenticationToken"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=x",
        "AWS4-HMAC-SHA256 Credential=MVEK/20240101/us-east-1/sagemaker/aws4_request SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=MVEK/20240101/sagemaker/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=MVEK/2024-1-1/r/sagemaker/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=MVEK/20240101/r/sagemaker/aws4_request, SignedHeaders=x-amz-date, Signature="
        + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=MVEK/20240101/r/sagemaker/aws4_request, SignedHeaders=Host, Signature=" + "0" * 64,
    ],
    ids=["not-sigv4", "no-signature", "no-commas", "short-scope", "bad-date", "host-not-signed", "upper-case"],
)
def test_malformed_authorization_is_incomplete_signature(authorization):
    url, headers, body = json_post()
    headers["Authorization"] = authorization
    error = refused("POST", (url, headers, body))
    assert (error.code, error.http_status) == ("IncompleteSignatureException", 400)
    assert error.query_code == "IncompleteSignature"


def test_no_date_is_incomplete_signature():
    url, headers, body = json_post()
    del headers["X-Amz-Date"]
    error = refused("POST", (url, headers, body))
    assert error.code == "IncompleteSignatureException"
    assert "'X-Amz-Date' or a 'Date' header" in error.message


def test_bad_date_format_is_incomplete_signature():
    url, headers, body = json_post()
    headers["X-Amz-Date"] = "2024-01-01T00:00:00Z"
    assert refused("POST", (url, headers, body)).code == "IncompleteSignatureException"


def test_presigned_url_is_incomplete_signature():
    error = refused("GET", ("http://h:1/x?X-Amz-Signature=abc", {"Host": "h:1"}, b""))
    assert error.code == "IncompleteSignatureException"


def test_scope_date_must_match_the_request_date():
    url, headers, body = json_post()
    amz_date = headers["X-Amz-Date"]
    other = "19990101" if amz_date[:8] != "19990101" else "19990102"
    headers["Authorization"] = headers["Authorization"].replace(f"/{amz_date[:8]}/", f"/{other}/")
    error = refused("POST", (url, headers, body))
    assert error.code == "InvalidSignatureException"
    assert "Date in Credential scope does not match" in error.message


def test_a_service_mve_does_not_speak_is_invalid_signature():
    error = refused("POST", sign("POST", "http://h:1/", b"{}", service="s3"))
    assert error.code == "InvalidSignatureException"
    assert "scoped to correct service" in error.message


def test_services_can_be_narrowed():
    signed = sign("POST", "http://h:1/", b"{}", service="monitoring")
    assert check("POST", signed, services={"monitoring"}) == KEY_ID
    assert refused("POST", signed, services={"sagemaker"}).code == "InvalidSignatureException"


# ---------------------------------------------------------------- time


def test_older_than_five_minutes_is_expired():
    signed = json_post()
    sent = time.time()
    assert check("POST", signed, now=sent + 290) == KEY_ID
    error = refused("POST", signed, now=sent + 310)
    assert (error.code, error.http_status) == ("InvalidSignatureException", 403)
    assert error.message.startswith("Signature expired: ")
    assert "is now earlier than" in error.message and "- 5 min.)" in error.message


def test_more_than_five_minutes_ahead_is_not_yet_current():
    signed = json_post()
    sent = time.time()
    assert check("POST", signed, now=sent - 290) == KEY_ID
    error = refused("POST", signed, now=sent - 310)
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith("Signature not yet current: ") and "is still later than" in error.message


def test_max_skew_is_a_parameter():
    signed = json_post()
    assert refused("POST", signed, now=time.time() + 61, max_skew_s=60).code == "InvalidSignatureException"


def test_date_header_instead_of_x_amz_date():
    from email.utils import formatdate

    request = AWSRequest(method="POST", url="http://h:1/", data=b"{}", headers={"Date": formatdate(usegmt=True)})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    headers = {**dict(request.headers.items()), "Host": "h:1"}
    assert "X-Amz-Date" not in headers
    assert verify("POST", "http://h:1/", headers, b"{}", KEYS) == KEY_ID


# ---------------------------------------------------------------- the comparison


def test_signatures_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sigv4.hmac, "compare_digest", spy)
    url, headers, body = json_post()
    signature = headers["Authorization"].rsplit("Signature=", 1)[1]
    assert verify("POST", url, headers, body, KEYS) == KEY_ID
    assert calls[-1] == (signature.encode(), signature.encode())
