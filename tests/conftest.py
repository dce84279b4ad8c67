import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy_and_clean_session():
    """Every test starts from the float32 policy, whatever the previous one set."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def cpu_description() -> str:
    """The CPU model and the instruction-set flags that decide which native kernels run (oneDNN's among them)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    isa = sorted(flag for flag in flags if flag.startswith(("avx", "amx")) or flag == "fma")
    return f"{model}; {os.cpu_count()} logical CPUs; {' '.join(isa) or 'no AVX flags read'}"


def pytest_report_header(config):
    # Native crashes depend on the CPU: every run names it, so a failure elsewhere can be matched to its machine.
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (on by default on x86)")
    return [f"cpu: {cpu_description()}", f"TF_ENABLE_ONEDNN_OPTS: {onednn}"]
