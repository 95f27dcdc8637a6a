"""Which OpenMM platform and torch device a run uses, decided once and recorded.

The model's TorchScript module is exported for one torch device and openmm-torch runs it on
the platform's device, so the two must agree: CUDA/OpenCL with ``cuda``, Reference/CPU with
``cpu``. "auto" picks CUDA where torch sees a GPU, else Reference (single-threaded and
deterministic: a resumed run there reproduces an uninterrupted one exactly; the model's own
cost dominates a step either way).
"""
from __future__ import annotations

GPU_PLATFORMS = ("CUDA", "OpenCL")
CPU_PLATFORMS = ("Reference", "CPU")


def available_platforms() -> list[str]:
    import openmm

    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_platform(name: str, device: str) -> tuple[str, str]:
    """Concrete (platform name, torch device) for the config's ``platform.name/device``."""
    if device == "auto":
        wants_gpu = name in GPU_PLATFORMS or (name == "auto" and cuda_available())
        device = "cuda" if wants_gpu else "cpu"
    if name == "auto":
        name = "CUDA" if device.startswith("cuda") else "Reference"
    if device.startswith("cuda") and name in CPU_PLATFORMS:
        raise ValueError(f"platform.name = {name!r} runs on the CPU but platform.device = "
                         f"{device!r}; use platform.device = 'cpu', or platform.name = 'CUDA'.")
    if device == "cpu" and name in GPU_PLATFORMS:
        raise ValueError(f"platform.name = {name!r} needs the model on the GPU; set "
                         "platform.device = 'cuda' (or 'auto').")
    if device.startswith("cuda") and not cuda_available():
        raise RuntimeError(f"platform.device = {device!r} but torch sees no CUDA device; use "
                           "platform.device = 'cpu' with platform.name = 'Reference' or 'CPU', "
                           "or run on a machine with a GPU.")
    platforms = available_platforms()
    if name not in platforms:
        raise ValueError(f"platform.name = {name!r} is not available in this OpenMM installation "
                         f"(available: {', '.join(platforms)}); install the OpenMM plug-in for it "
                         "or choose another platform.")
    if name in CPU_PLATFORMS:
        # openmmml first: importing openmm_mace_lp.potential before it is a circular import
        # (openmmml loads its entry points, i.e. that very module, while it is half-initialised).
        import openmmml  # noqa: F401

        from openmm_mace_lp.potential import check_cpu_torch

        check_cpu_torch(name)
    return name, device


def device_name(device: str) -> str:
    """Human-readable name of the card (for the manifest), or "cpu"."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    return torch.cuda.get_device_name(index)


def reinitializes_on_checkpoint(setting: str | bool, platform_name: str) -> bool:
    """Whether the context is rebuilt after each checkpoint (see OutputConfig)."""
    if setting == "auto":
        return platform_name == "Reference"
    return bool(setting)
