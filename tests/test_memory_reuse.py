"""Freed tensors' memory is reused by the next steps' instead of being faulted in again."""

import json
import subprocess
import sys
import textwrap

import pytest

# A "step" allocates tensors over glibc's largest mmap threshold and frees them, as a training
# step does. With reuse the heap settles after a few steps: torch's allocations are 64-byte
# aligned, so a single freed block fits the same request only once it has coalesced with its
# neighbours; after that, most steps fault nothing in.
PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from alcap.utils import reuse_freed_memory
    took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
    def faults_of_a_step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(64 * 2**20 // 4)
        b = torch.ones(96 * 2**20 // 4)
        c = a + 1
        del a, b, c
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults = [faults_of_a_step() for _ in range(10)]
    print(json.dumps({"took": took, "faults": faults}))
""")
STEP_PAGES = (64 + 96 + 64) * 2**20 // 4096


def faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_large_tensors_are_reused_not_faulted_in_again():
    plain, reused = faults("plain"), faults("reuse")
    if not reused["took"]:
        pytest.skip("not glibc")
    # glibc unmapped them: every step faults every page in (and the kernel zeroes it) again
    assert min(plain["faults"][-6:]) > STEP_PAGES / 2
    # settled: most steps fault nothing; now and then the heap still grows by a block
    assert sum(reused["faults"][-6:]) < sum(plain["faults"][-6:]) / 4, str(reused["faults"])
