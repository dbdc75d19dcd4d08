"""Freed tensors' memory is reused by the next ones instead of being faulted in again."""

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from alcap.utils import reuse_freed_memory
    took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
    def faults_of_a_step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, over glibc's largest mmap threshold
        del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_a_step()  # the first allocation faults its pages in either way
    print(json.dumps({"took": took, "faults": min(faults_of_a_step() for _ in range(3))}))
""")


def faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_freed_large_tensor_is_reused_not_faulted_in_again():
    plain, reused = faults("plain"), faults("reuse")
    if not reused["took"]:
        pytest.skip("not glibc")
    pages = 64 * 1024 * 1024 // 4096
    assert plain["faults"] > pages / 2  # glibc unmapped it: every page faulted in (and zeroed) again
    assert reused["faults"] < pages / 20
