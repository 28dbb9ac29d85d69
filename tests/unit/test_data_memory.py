"""Bounded memory: a 200 MB generated corpus streams through in a child process with a flat resident set."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_streaming_a_200mb_file_keeps_memory_bounded(tmp_path):
    corpus = tmp_path / "big.txt"
    line = ("the quick brown fox jumps over the lazy dog " * 4 + "\n").encode()
    block = line * 20000
    with open(corpus, "wb") as f:
        while f.tell() < 200 * 1024 * 1024:
            f.write(block)
        f.write(b"x" * (30 * 1024 * 1024) + b"\n")  # one 30 MB line: split, never held whole
    script = textwrap.dedent(
        f"""
        import resource, sys
        from scaling.data.sources import parse_spec
        from scaling.data.streams import open_record_stream
        from scaling.data.pipeline import pack_tokens
        stream = open_record_stream(parse_spec({str(corpus)!r}), label_column=None, max_doc_chars=1_000_000,
                                    dp_rank=0, dp_size=1, seed=0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = chars = 0
        carry = []
        batch = []
        while (r := stream.next_record(stop_at_epoch_end=True)) is not None:
            count += 1
            chars += len(r.text)
            batch.append([len(w) for w in r.text.split()[:8]])
            if len(batch) == 1024:
                _, carry = pack_tokens(batch, carry, 0, 128)
                batch = []
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(count, chars, stream.counts.split_long, (peak - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    _count, chars, split, grown_mb = map(int, out.stdout.split())
    assert chars > 200 * 1024 * 1024 and split >= 30
    assert grown_mb < 64, f"resident set grew by {grown_mb} MB while streaming 230 MB"
