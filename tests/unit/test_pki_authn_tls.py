"""The foundation every door uses: token files and TokenSet (`mve.authn`), who may call what (policies and
the Gatekeeper), TLS files checked with messages naming the flag (`mve.tls`), and the local CA of
``mve up --secure`` (`mve.pki`)."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mve import authn, pki
from mve.authn import (
    ADMIN,
    OPEN,
    READ,
    ControlPlanePolicy,
    Gatekeeper,
    ModelServerPolicy,
    RuntimePolicy,
    TokenFileError,
    TokenSet,
    bearer_metadata,
    fingerprint,
    new_token,
    read_tokens,
)
from mve.errors import AccessDenied, Unauthenticated, UnrecognizedClient
from mve.tls import TlsConfigError, load_tls, write_private

# ---------------------------------------------------------------- token files


def _token_file(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_token_file_gives_its_tokens_skipping_comments_and_blank_lines(tmp_path):
    first, second = new_token(), new_token()
    path = _token_file(tmp_path / "tokens", f"# admins\n\n{first}\n  {second}  \n")
    assert read_tokens(path) == (first, second)


def test_new_tokens_are_fresh_and_fit_the_format():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(authn.TOKEN_PATTERN.match(t) for t in tokens)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_can_read_is_refused_naming_the_flag(tmp_path, mode):
    path = _token_file(tmp_path / "tokens", new_token() + "\n", mode)
    with pytest.raises(TokenFileError, match=rf"^--invoke-token-file: .*mode {mode:o}.*must be 0600: chmod 600"):
        read_tokens(path, flag="--invoke-token-file")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "holds no token"), ("# only a comment\n", "holds no token"),
     ("short\n", "line 1 of .* is not a token"), (f"{new_token()}\nhas space in it {'x' * 40}\n", "line 2"),
     ("x" * 513 + "\n", "line 1"), ("\n".join(new_token() for _ in range(101)) + "\n", "holds 101 tokens, more than 100")],
)
def test_malformed_token_files_are_refused_saying_why(tmp_path, text, message):
    with pytest.raises(TokenFileError, match=message):
        read_tokens(_token_file(tmp_path / "tokens", text))


def test_missing_huge_and_non_file_token_files_are_refused(tmp_path):
    with pytest.raises(TokenFileError, match=r"^--token-file: cannot read"):
        read_tokens(tmp_path / "nothing")
    with pytest.raises(TokenFileError, match="is not a file"):
        read_tokens(tmp_path)
    huge = _token_file(tmp_path / "huge", "#" * (authn.MAX_TOKEN_FILE_BYTES + 1))
    with pytest.raises(TokenFileError, match="larger than 65536 bytes"):
        read_tokens(huge)


def test_a_token_set_matches_exactly():
    tokens = [new_token(), new_token()]
    accepted = TokenSet(tokens)
    assert len(accepted) == 2 and all(accepted.match(t) for t in tokens)
    for other in ("", tokens[0][:-1], tokens[0] + "x", tokens[0].upper(), "é" * 43, new_token()):
        assert not accepted.match(other)


def test_a_token_set_compares_every_token_in_constant_time(monkeypatch):
    compared, real = [], hmac.compare_digest

    def compare_digest(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(authn.hmac, "compare_digest", compare_digest)
    tokens = [new_token() for _ in range(5)]
    accepted = TokenSet(tokens)
    assert accepted.match(tokens[0])  # found first, still compared with all five
    assert len(compared) == 5
    assert not accepted.match("x" * 43)
    assert len(compared) == 10


def test_a_fingerprint_names_a_token_without_showing_it():
    token = new_token()
    assert fingerprint(token).startswith("token:") and len(fingerprint(token)) == 14
    assert token not in fingerprint(token) and fingerprint(token) != fingerprint(new_token())
    assert bearer_metadata(token) == (("authorization", f"Bearer {token}"),)
    assert bearer_metadata(None) == ()


# ---------------------------------------------------------------- policies: who may call what

CONTROL = "/mve.v1.EndpointControl/"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.mark.parametrize(
    ("method", "closed", "opened"),
    [(HEALTH, OPEN, OPEN), (REFLECTION, OPEN, OPEN),
     (CONTROL + "DescribeEndpoint", READ, OPEN), (CONTROL + "ListModels", READ, OPEN),
     ("/mve.v1.CloudWatch/GetMetricStatistics", READ, OPEN),
     (CONTROL + "CreateModel", {ADMIN, "control-plane"}, {ADMIN, "control-plane"}),
     (CONTROL + "UpdateEndpointWeightsAndCapacities", {ADMIN, "control-plane"}, {ADMIN, "control-plane"}),
     (CONTROL + "WatchRoutes", {ADMIN, "control-plane", "proxy"}, {ADMIN, "control-plane", "proxy"}),
     (CONTROL + "ReportStats", {ADMIN, "control-plane", "proxy"}, {ADMIN, "control-plane", "proxy"}),
     # A key list names every key: never opened with the reads.
     ("/mve.v1.AccessKeys/ListAccessKeys", {ADMIN, "control-plane"}, {ADMIN, "control-plane"})],
)
def test_the_control_planes_rules(method, closed, opened):
    for policy, expected in ((ControlPlanePolicy(), closed), (ControlPlanePolicy(open_reads=True), opened)):
        rule = policy.rule(method)
        assert (rule.kind if isinstance(expected, str) else set(rule.roles)) == expected, (method, policy.open_reads)


def test_actions_are_named_as_aws_names_them():
    assert authn.action_of(CONTROL + "CreateModel") == "sagemaker:CreateModel"
    assert authn.action_of("/mve.v1.AccessKeys/ListAccessKeys") == "iam:ListAccessKeys"


def test_the_runtimes_and_model_servers_rules():
    runtime, model_server = RuntimePolicy(), ModelServerPolicy()
    assert runtime.rule(HEALTH).kind == OPEN and model_server.rule(HEALTH).kind == OPEN
    for method in ("/mve.v1.EndpointRuntime/InvokeEndpoint", "/inference.GRPCInferenceService/ModelInfer",
                   "/inference.GRPCInferenceService/ModelMetadata"):
        assert runtime.rule(method).kind == authn.INVOKE
    assert set(model_server.rule("/inference.GRPCInferenceService/ModelInfer").roles) == {ADMIN, "control-plane", "proxy"}


class FakeContext:
    """What a gatekeeper reads of a call: the peer and, under mutual TLS, the certificate's Common Name."""

    def __init__(self, common_name: str | None = None):
        self.common_name = common_name

    def auth_context(self):
        return {"x509_common_name": [self.common_name.encode()]} if self.common_name else {}

    def peer(self):
        return "ipv4:127.0.0.1:5555"


TOKEN = new_token()


def _check(policy, method, *, token=None, common_name=None, tokens=(TOKEN,), header=None):
    metadata = [("x-mve-request-id", "r")]
    if header is not None:
        metadata.append(("authorization", header))
    elif token is not None:
        metadata.extend(bearer_metadata(token))
    return Gatekeeper(policy, TokenSet(tokens)).check(method, metadata, FakeContext(common_name))


def test_no_credential_is_missing_authentication_token():
    error = _check(ControlPlanePolicy(), CONTROL + "CreateModel")
    assert isinstance(error, Unauthenticated) and error.reason == "MissingAuthenticationTokenException"
    assert "sagemaker:CreateModel" in str(error)
    assert isinstance(_check(RuntimePolicy(), "/mve.v1.EndpointRuntime/InvokeEndpoint"), Unauthenticated)


def test_an_unknown_or_malformed_token_is_an_unrecognized_client():
    for kwargs in ({"token": new_token()}, {"header": f"Basic {TOKEN}"}, {"token": TOKEN, "tokens": ()}):
        error = _check(ControlPlanePolicy(), CONTROL + "DescribeEndpoint", **kwargs)
        assert isinstance(error, UnrecognizedClient) and error.reason == "UnrecognizedClientException"
    # A wrong token is refused even where a certificate would have been enough.
    assert isinstance(_check(ControlPlanePolicy(), CONTROL + "ListModels", token=new_token(), common_name="mve-admin"),
                      UnrecognizedClient)


def test_a_door_without_tokens_goes_by_the_certificate_when_a_token_comes_too():
    # The SDK sends a secure data dir's token everywhere; a door that takes no tokens trusts the certificate.
    assert _check(RuntimePolicy(), "/mve.v1.EndpointRuntime/InvokeEndpoint", token=TOKEN, tokens=(),
                  common_name="mve-admin") is None
    error = _check(ControlPlanePolicy(), CONTROL + "CreateModel", token=TOKEN, tokens=(), common_name="mve-proxy")
    assert isinstance(error, AccessDenied)


def test_a_token_holder_is_an_administrator():
    for method in (CONTROL + "CreateModel", CONTROL + "DescribeEndpoint", "/mve.v1.AccessKeys/CreateAccessKey"):
        assert _check(ControlPlanePolicy(), method, token=TOKEN) is None
    assert _check(ControlPlanePolicy(), CONTROL + "CreateModel", header=f"bearer {TOKEN}") is None  # scheme's case


@pytest.mark.parametrize(
    ("common_name", "method", "allowed"),
    [("mve-admin", CONTROL + "CreateModel", True), ("mve-control-plane", CONTROL + "CreateModel", True),
     ("mve-proxy", CONTROL + "WatchRoutes", True), ("mve-proxy", CONTROL + "DescribeEndpoint", True),
     ("mve-proxy", CONTROL + "CreateModel", False), ("mve-model-server", CONTROL + "WatchRoutes", False),
     ("dashboards", CONTROL + "ListEndpoints", True), ("dashboards", CONTROL + "DeleteEndpoint", False),
     ("dashboards", "/mve.v1.AccessKeys/ListAccessKeys", False)],
)
def test_a_certificates_common_name_decides_its_role(common_name, method, allowed):
    error = _check(ControlPlanePolicy(), method, common_name=common_name)
    if allowed:
        assert error is None
    else:
        assert isinstance(error, AccessDenied) and error.reason == "AccessDeniedException"
        assert f"User: {common_name} is not authorized to perform: {authn.action_of(method)}" in str(error)


def test_model_servers_admit_only_the_control_plane_and_proxies():
    infer = "/inference.GRPCInferenceService/ModelInfer"
    assert _check(ModelServerPolicy(), infer, common_name="mve-proxy", tokens=()) is None
    assert _check(ModelServerPolicy(), infer, common_name="mve-control-plane", tokens=()) is None
    assert isinstance(_check(ModelServerPolicy(), infer, common_name="mve-model-server", tokens=()), AccessDenied)
    assert isinstance(_check(ModelServerPolicy(), infer, common_name="someone", tokens=()), AccessDenied)
    assert _check(ModelServerPolicy(), HEALTH) is None


def test_open_reads_need_no_credential_but_changes_still_do():
    assert _check(ControlPlanePolicy(open_reads=True), CONTROL + "DescribeEndpoint") is None
    assert isinstance(_check(ControlPlanePolicy(open_reads=True), CONTROL + "CreateModel"), Unauthenticated)


def test_refusals_are_logged_with_a_fingerprint_never_the_token(caplog):
    wrong = new_token()
    with caplog.at_level(logging.WARNING, logger="mve.authn"):
        _check(ControlPlanePolicy(), CONTROL + "CreateModel", token=wrong)
        _check(ControlPlanePolicy(), CONTROL + "CreateModel", common_name="mve-proxy")
    assert "event=call_refused" in caplog.text and "principal=mve-proxy" in caplog.text
    assert wrong not in caplog.text and TOKEN not in caplog.text


# ---------------------------------------------------------------- TLS files


@pytest.fixture(scope="module")
def local_pki(tmp_path_factory):
    return pki.ensure_local_pki(tmp_path_factory.mktemp("pki") / "tls", hosts=["mve.internal"])


def test_nothing_given_is_no_tls():
    assert load_tls() is None


def test_a_servers_files_load(local_pki):
    files = load_tls(local_pki.cert("proxy"), local_pki.key("proxy"), local_pki.ca_cert, need_identity=True)
    assert files.has_identity and files.ca_pem.startswith(b"-----BEGIN CERTIFICATE")
    files.server_credentials(require_client_auth=True)
    files.channel_credentials()
    assert files.server_ssl_context() and files.client_ssl_context()


def test_a_missing_file_names_its_flag(local_pki, tmp_path):
    with pytest.raises(TlsConfigError, match=r"^--tls-cert: cannot read .*missing\.crt"):
        load_tls(tmp_path / "missing.crt", local_pki.key("proxy"))
    with pytest.raises(TlsConfigError, match=r"^--model-server-tls-ca: cannot read"):
        load_tls(ca=tmp_path / "missing.crt", flag="--model-server-tls")


def test_a_key_others_can_read_is_refused(local_pki, tmp_path):
    key = tmp_path / "proxy.key"
    key.write_bytes(local_pki.key("proxy").read_bytes())
    key.chmod(0o644)
    with pytest.raises(TlsConfigError, match=r"^--tls-key: .*mode 644.*must be 0600: chmod 600"):
        load_tls(local_pki.cert("proxy"), key, local_pki.ca_cert)


def test_a_key_of_another_certificate_is_refused(local_pki):
    with pytest.raises(TlsConfigError, match=r"^--tls-key: .*client\.key is not the key of the certificate in .*proxy\.crt"):
        load_tls(local_pki.cert("proxy"), local_pki.key("client"), local_pki.ca_cert)


def test_a_server_with_only_a_ca_or_half_a_pair_is_refused(local_pki):
    with pytest.raises(TlsConfigError, match="--tls-ca without --tls-cert and --tls-key"):
        load_tls(ca=local_pki.ca_cert, need_identity=True)
    assert not load_tls(ca=local_pki.ca_cert).has_identity  # a client may trust a CA and show nothing
    with pytest.raises(TlsConfigError, match="--tls-cert and --tls-key go together"):
        load_tls(cert=local_pki.cert("proxy"))
    with pytest.raises(TlsConfigError, match="needs the CA bundle"):
        load_tls(local_pki.cert("proxy"), local_pki.key("proxy")).server_credentials(require_client_auth=True)


def test_files_that_are_not_pem_are_refused(local_pki, tmp_path):
    junk = tmp_path / "junk.crt"
    junk.write_text("hello")
    with pytest.raises(TlsConfigError, match=r"^--tls-ca: .*is not PEM"):
        load_tls(ca=junk)
    fake = tmp_path / "fake.crt"
    fake.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match=r"^--tls-ca: .*holds no valid PEM certificate"):
        load_tls(ca=fake)


def test_write_private_writes_0600_and_replaces_whole(tmp_path):
    path = tmp_path / "sub" / "secret"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left


# ---------------------------------------------------------------- the local CA


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_file_is_0600_in_a_0700_directory(local_pki):
    files = list(local_pki.directory.iterdir())
    assert len(files) == 10 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(local_pki.directory.stat().st_mode) == 0o700


def test_each_role_has_its_common_name_and_names_this_machine(local_pki):
    ca = _cert(local_pki.ca_cert)
    for role, common_name in pki.ROLES.items():
        cert = _cert(local_pki.cert(role))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
        assert authn.ROLE_OF_COMMON_NAME[common_name] in (ADMIN, "control-plane", "proxy", "model-server")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", "mve.internal"} <= set(names.get_values_for_type(x509.DNSName))
        addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
        assert {"127.0.0.1", "::1"} <= addresses
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert cert.issuer == ca.subject
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_second_run_keeps_every_file(tmp_path):
    first = pki.ensure_local_pki(tmp_path / "tls")
    before = {p.name: p.read_bytes() for p in first.directory.iterdir()}
    pki.ensure_local_pki(tmp_path / "tls")
    assert {p.name: p.read_bytes() for p in first.directory.iterdir()} == before


def test_a_missing_role_certificate_is_made_again_from_the_same_ca(tmp_path):
    files = pki.ensure_local_pki(tmp_path / "tls")
    ca_before, proxy_before = files.ca_cert.read_bytes(), files.cert("proxy").read_bytes()
    files.cert("client").unlink()
    pki.ensure_local_pki(tmp_path / "tls")
    assert files.ca_cert.read_bytes() == ca_before and files.cert("proxy").read_bytes() == proxy_before
    assert _cert(files.cert("client")).issuer == _cert(files.ca_cert).subject


def test_a_leaf_due_to_expire_is_renewed_and_the_ca_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(pki, "LEAF_DAYS", 10)  # within RENEW_BEFORE (30 days) from the start
    files = pki.ensure_local_pki(tmp_path / "tls")
    ca_before = files.ca_cert.read_bytes()
    short = _cert(files.cert("proxy")).not_valid_after_utc
    monkeypatch.setattr(pki, "LEAF_DAYS", 825)
    pki.ensure_local_pki(tmp_path / "tls")
    assert files.ca_cert.read_bytes() == ca_before
    renewed = _cert(files.cert("proxy")).not_valid_after_utc
    assert renewed - short > dt.timedelta(days=800)
    load_tls(files.cert("proxy"), files.key("proxy"), files.ca_cert)  # the new key matches the new certificate


def test_a_certificate_for_another_service_from_the_same_ca(tmp_path):
    files = pki.ensure_local_pki(tmp_path / "tls")
    cert, key = pki.make_certificate(tmp_path, "dashboards", "dashboards", files)
    assert _cert(cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dashboards"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    load_tls(cert, key, files.ca_cert)
