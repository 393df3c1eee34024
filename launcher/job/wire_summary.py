"""The summary's ``compression`` key: bytes per step before and after, and what coding cost."""

from __future__ import annotations


def compression_summary(config, reports: list[dict], stats: list[dict], transport: str) -> dict:
    """Over every worker's pushes (a dead incarnation's reports carry none): the codec, the dense and
    sparse bytes per step uncompressed and as sent, and the seconds workers spent encoding and shards
    decoding."""
    wire = [r["wire"] for r in reports if r.get("wire")]
    steps = sum(w["steps"] for w in wire)
    raw, sent = sum(w["raw_bytes"] for w in wire), sum(w["sent_bytes"] for w in wire)
    row_raw, row_sent = sum(w["row_raw_bytes"] for w in wire), sum(w["row_sent_bytes"] for w in wire)
    all_steps = sum(r.get("steps", 0) for r in reports)
    per_step = lambda total, n: round(total / n, 1) if n else None  # noqa: E731
    encode_s = sum(w["encode_s"] for w in wire)
    out = {
        "codec": config.codec,
        "error_feedback": config.feedback,
        "dense_bytes_per_step": per_step(raw, steps),
        "dense_sent_bytes_per_step": per_step(sent, steps),
        "dense_ratio": round(sent / raw, 4) if raw else None,
        "encode_ms_per_step": round(1e3 * encode_s / steps, 4) if steps else None,
        "decode_s": round(sum(s.get("decode_s", 0.0) for s in stats), 4),
    }
    # pulls: float32, or fp16 / bf16 over gRPC (half the bytes; other transports pull float32)
    out["pull"] = config.pull if transport == "grpc" else "none"
    out["pull_bytes_per_step"] = per_step(raw, steps)
    out["pull_sent_bytes_per_step"] = per_step(raw, steps * (2 if out["pull"] != "none" else 1))
    # what crossed the wire per example trained, pushes and pulls (under local steps a push carries H batches)
    samples = sum(r.get("samples", 0) for r in reports if r.get("wire"))
    pulled = raw / (2 if out["pull"] != "none" else 1)
    out["bytes_per_example"] = round((sent + pulled) / samples, 1) if samples else None
    if config.codec == "topk":
        out["fraction"] = config.fraction
    if row_raw:
        out.update(sparse_bytes_per_step=per_step(row_raw, all_steps),
                   sparse_sent_bytes_per_step=per_step(row_sent, all_steps),
                   sparse_ratio=round(row_sent / row_raw, 4))
    return out
