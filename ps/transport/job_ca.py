"""A certificate authority that lives as long as one job: mutual TLS with nothing configured.

A job whose gRPC traffic can leave the machine makes a ``JobAuthority`` in
its driver as it starts. The authority's key never leaves the driver's
memory: it signs one certificate per shard (server auth) and one per worker
incarnation (client auth), each with a key of its own, and the driver hands
each actor only its own key and certificate, as an argument of the Ray call
that starts it (Ray's authenticated channel). Nothing is written to disk;
when the job ends, the authority and every key go with the processes that
held them, so a later job, or anyone who kept an old certificate, is a
stranger to the next one.

A shard's certificate names ``SHARD_NAME`` (workers dial addresses that a
Ray node picked at start, so the name checked is a fixed one, not the
address); what a client verifies is that the shard holds a key this job's
authority signed. A worker's certificate names its worker id and
incarnation as its common name (``worker_subject``), and a shard serving
with the job's keys holds every request to it (``worker_named``): a worker
speaks only as itself, and a stolen certificate speaks for one worker life.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

import grpc

#: The name every shard certificate carries and every client checks (not a resolvable host).
SHARD_NAME = "shard.rayps.invalid"

#: How a worker certificate's common name ends: `` worker <id>.<incarnation>`` (after the job's name).
_WORKER_NAME = re.compile(rb" worker (\d+)\.(\d+)\Z")

#: Long enough for any job; the authority is thrown away with the job, so expiry guards nothing here.
VALIDITY = datetime.timedelta(days=400)


@dataclass(frozen=True)
class TLSKeys:
    """One side's TLS material in memory (PEM): the CA it trusts, its certificate and key.

    The same interface as ``TLSConfig`` (files), so servers and clients take either.
    """

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)  # never in logs or reprs
    server_name: str | None = SHARD_NAME  # the name a client checks against the server's certificate
    subject: str = ""  # the certificate's common name, for messages

    def server_credentials(self) -> grpc.ServerCredentials:
        """Present this certificate; demand one from every client, signed by ``ca``."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verify the server against ``ca``; present this certificate as the client's."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


class JobAuthority:
    """The job's CA: its key stays here; it issues each shard's and each worker's keys."""

    def __init__(self, job: str):
        from cryptography.hazmat.primitives.asymmetric import ec

        self.job = job
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = self._issue(f"rayps job {job} CA", self._key.public_key(), ca=True)
        self.ca = _pem(self._cert)

    def __repr__(self) -> str:
        return f"JobAuthority({self.job!r})"

    def shard_keys(self, shard_id: int) -> TLSKeys:
        """A server certificate for shard ``shard_id`` (named ``SHARD_NAME``)."""
        return self._keys(f"rayps {self.job} shard {shard_id}", server=True)

    def worker_keys(self, worker_id: int, incarnation: int = 0) -> TLSKeys:
        """A client certificate for one incarnation of one worker."""
        return self._keys(worker_subject(self.job, worker_id, incarnation), server=False)

    def _keys(self, subject: str, server: bool) -> TLSKeys:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(subject, key.public_key(), server=server)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return TLSKeys(self.ca, _pem(cert), key_pem, subject=subject)

    def _issue(self, subject: str, public_key, ca: bool = False, server: bool = False):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        issuer = name if ca else self._cert.subject
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of nodes differ a little
                   .not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            if server:
                builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SHARD_NAME)]),
                                                critical=False)
        return builder.sign(self._key, hashes.SHA256())


def worker_subject(job: str, worker_id: int, incarnation: int) -> str:
    """The common name of a worker life's certificate."""
    return f"rayps {job} worker {worker_id}.{incarnation}"


def worker_named(common_name: bytes | None) -> tuple[int, int] | None:
    """The (worker id, incarnation) a client certificate's common name names; None if it names no worker."""
    found = _WORKER_NAME.search(common_name or b"")
    return (int(found[1]), int(found[2])) if found else None


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)
