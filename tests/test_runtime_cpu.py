"""``cpu_label``: recorded timings name the CPU closely enough to tell two machines of one name apart."""
import io

import vitlab.runtime as runtime

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx2 sha_ni

processor\t: 1
cpu family\t: 99
model\t\t: 9
model name\t: AMD EPYC
flags\t\t: fpu avx512f
"""


def test_cpu_label_adds_family_model_and_vector_isa(monkeypatch):
    monkeypatch.setattr(runtime, "open", lambda path, *a, **k: io.StringIO(CPUINFO), raising=False)
    assert runtime.cpu_label() == "AMD EPYC (family 23 model 1, avx2)"  # the first processor's block
    assert runtime.device_name("cpu") == "AMD EPYC (family 23 model 1, avx2)"


def test_cpu_label_without_cpuinfo_is_the_name(monkeypatch):
    def no_file(path, *a, **k):
        raise OSError(path)
    monkeypatch.setattr(runtime, "open", no_file, raising=False)
    assert runtime.cpu_label() == runtime.cpu_name() != ""
