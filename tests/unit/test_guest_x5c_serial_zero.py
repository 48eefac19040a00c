"""X5C roots against public roots whose serial number is 0 (Go Daddy and Starfield G2, HARICA 2015,
SECOM RootCA2: in Debian's and Fedora's trust bundles). cryptography 4x warns when it parses them
and a later release refuses them; the guest must still refuse them as X5C roots, with one line and
no stray warning. Found by the newest-userland tier (tests/newest) under Debian sid."""
import hashlib
import warnings

import pytest
from ca_appliance import x5c
from cryptography import x509
from cryptography.hazmat.primitives import serialization

GO_DADDY_G2 = """\
-----BEGIN CERTIFICATE-----
MIIDxTCCAq2gAwIBAgIBADANBgkqhkiG9w0BAQsFADCBgzELMAkGA1UEBhMCVVMx
EDAOBgNVBAgTB0FyaXpvbmExEzARBgNVBAcTClNjb3R0c2RhbGUxGjAYBgNVBAoT
EUdvRGFkZHkuY29tLCBJbmMuMTEwLwYDVQQDEyhHbyBEYWRkeSBSb290IENlcnRp
ZmljYXRlIEF1dGhvcml0eSAtIEcyMB4XDTA5MDkwMTAwMDAwMFoXDTM3MTIzMTIz
NTk1OVowgYMxCzAJBgNVBAYTAlVTMRAwDgYDVQQIEwdBcml6b25hMRMwEQYDVQQH
EwpTY290dHNkYWxlMRowGAYDVQQKExFHb0RhZGR5LmNvbSwgSW5jLjExMC8GA1UE
AxMoR28gRGFkZHkgUm9vdCBDZXJ0aWZpY2F0ZSBBdXRob3JpdHkgLSBHMjCCASIw
DQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAL9xYgjx+lk09xvJGKP3gElY6SKD
E6bFIEMBO4Tx5oVJnyfq9oQbTqC023CYxzIBsQU+B07u9PpPL1kwIuerGVZr4oAH
/PMWdYA5UXvl+TW2dE6pjYIT5LY/qQOD+qK+ihVqf94Lw7YZFAXK6sOoBJQ7Rnwy
DfMAZiLIjWltNowRGLfTshxgtDj6AozO091GB94KPutdfMh8+7ArU6SSYmlRJQVh
GkSBjCypQ5Yj36w6gZoOKcUcqeldHraenjAKOc7xiID7S13MMuyFYkMlNAJWJwGR
tDtwKj9useiciAF9n9T521NtYJ2/LOdYq7hfRvzOxBsDPAnrSTFcaUaz4EcCAwEA
AaNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYE
FDqahQcQZyi27/a9BUFuIMGU2g/eMA0GCSqGSIb3DQEBCwUAA4IBAQCZ21151fmX
WWcDYfF+OwYxdS2hII5PZYe096acvNjpL9DbWu7PdIxztDhC2gV7+AJ1uP2lsdeu
9tfeE8tTEH6KRtGX+rcuKxGrkLAngPnon1rpN5+r5N9ss4UXnT3ZJE95kTXWXwTr
gIOrmgIttRD02JDHBHNA7XIloKmf7J6raBKZV8aPEjoJpL1E/QYVN8Gb5DKj7Tjo
2GTzLH4U/ALqn83/B2gX2yKQOC16jdFU8WnjXzPKej17CuPKf1855eJ1usV2GDPO
LPAvTK33sefOT6jEm0pUBsV/fdUID+Ic/n4XuKxe9tQWskMJDE32p2u0mYRlynqI
4uJEvlz36hz1
-----END CERTIFICATE-----
"""


def der_sha256(pem):
    return hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(
        serialization.Encoding.DER)).hexdigest()


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "ca-certificates.crt"
    path.write_text(GO_DADDY_G2)
    return str(path)


def test_a_public_root_with_serial_0_is_known_without_a_warning(bundle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what the newest-userland tier does for the guest package
        ids = x5c.public_ids(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert der_sha256(GO_DADDY_G2) in ids
        assert x5c.key_id(x509.load_pem_x509_certificate(GO_DADDY_G2.encode())) in ids


def test_it_is_refused_as_an_x5c_root_with_one_line(bundle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(x5c.X5CRefused, match="is in the system's public trust bundle") as refused:
            x5c.check_roots(GO_DADDY_G2, bundle=bundle)
    assert "\n" not in str(refused.value) and "Go Daddy Root Certificate Authority - G2" in str(refused.value)
