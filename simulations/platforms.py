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


# Values OpenMM accepts for the properties whose values it does not check when a context is
# made (CPU "Threads" = "x" is silently accepted, for instance).
_PROPERTY_VALUES = {
    "Precision": ("single", "mixed", "double"),
    "DeterministicForces": ("true", "false"),
    "UseBlockingSync": ("true", "false"),
    "UseCpuPme": ("true", "false"),
}
_INTEGER_PROPERTIES = ("Threads", "CpuThreads")
_INDEX_LIST_PROPERTIES = ("DeviceIndex", "CudaDeviceIndex", "OpenCLDeviceIndex", "OpenCLPlatformIndex")


def check_platform_properties(name: str, properties: dict[str, str]) -> None:
    """Fail now, naming the key, when ``[platform.properties]`` does not fit platform ``name``.

    Names are checked against the platform's own list; values of the properties above against
    what OpenMM takes; then a one-particle context on the platform lets OpenMM check the rest.
    Without this, a wrong property fails only after the model has been exported.
    """
    if not properties:
        return
    import openmm

    platform = openmm.Platform.getPlatformByName(name)
    valid = list(platform.getPropertyNames())
    for key, value in properties.items():
        if key not in valid:
            accepted = f"it accepts {', '.join(valid)}" if valid else "it takes no properties"
            raise ValueError(f"platform.properties.{key} = {value!r} is not a property of the {name} "
                             f"platform ({accepted}); remove it or choose another platform.name.")
        allowed = _PROPERTY_VALUES.get(key)
        text = str(value).strip()
        if allowed is not None and text.lower() not in allowed:
            raise ValueError(f"platform.properties.{key} = {value!r}: use one of {', '.join(allowed)}.")
        if key in _INTEGER_PROPERTIES and not text.isdigit():
            raise ValueError(f"platform.properties.{key} = {value!r}: give a whole number of threads.")
        if key in _INDEX_LIST_PROPERTIES and not all(part.strip().isdigit() for part in text.split(",")):
            raise ValueError(f"platform.properties.{key} = {value!r}: give a device index such as \"0\" "
                             "(or a comma-separated list).")
    system = openmm.System()
    system.addParticle(1.0)
    try:
        openmm.Context(system, openmm.VerletIntegrator(0.001), platform, dict(properties))
    except openmm.OpenMMException as error:
        raise ValueError(f"[platform.properties] {dict(properties)} are not accepted by the {name} "
                         f"platform: {error}") from None
