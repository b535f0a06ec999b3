"""A too-old dependency fails here, by name, rather than deep inside a run: the installed versions meet
pyproject's lower bounds, every name the code imports exists, and every third-party import is declared."""

import ast
import importlib
import importlib.metadata as metadata
import inspect
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME_CODE = [ROOT / "src", ROOT / "kernels", ROOT / "train.py", ROOT / "eval.py", ROOT / "data"]
# hydra_plugins: checked by name below; the benchmarks import their sibling scripts by name
BENCHMARK_SCRIPTS = {p.stem for p in (ROOT / "kernels" / "benchmarks").glob("*.py")}
OURS = {"sla2_train", "sla2_kernels", "hydra_plugins"} | BENCHMARK_SCRIPTS
# Imported only where a feature needs them, and declared as an optional extra: their absence is one skip line.
OPTIONAL = {"torchvision": "raft"}

# What the code (src/, kernels/, entry points, configs' _target_s) takes from each distribution, as module:name.
USED = {
    "torch": ["torch:float8_e4m3fn", "torch.library:custom_op", "torch.nn.attention:SDPBackend",
              "torch.nn.attention:sdpa_kernel", "torch.nn.attention.flex_attention:BlockMask",
              "torch.nn.attention.flex_attention:flex_attention", "torch.utils.checkpoint:CheckpointPolicy",
              "torch.utils.checkpoint:create_selective_checkpoint_contexts", "torch.optim:AdamW",
              "torch.distributed.fsdp:FullyShardedDataParallel", "torch.distributed.checkpoint:FileSystemReader",
              "torch.distributed.checkpoint:load", "torch.distributed.checkpoint.api:CheckpointException",
              "torch.distributed.checkpoint.metadata:TensorStorageMetadata", "torch.compiler:is_compiling",
              "torch.utils._python_dispatch:_get_current_dispatch_mode"],
    "triton": ["triton.tools.tensor_descriptor:TensorDescriptor", "triton.runtime.errors:OutOfResources",
               "triton.language:static_range", "triton.language:float8e4nv"],
    "lightning": ["lightning.pytorch:Trainer", "lightning.pytorch.callbacks:ModelCheckpoint",
                  "lightning.pytorch.callbacks:TQDMProgressBar", "lightning.pytorch.loggers:CSVLogger",
                  "lightning.pytorch.loggers:WandbLogger", "lightning.pytorch.strategies:DDPStrategy",
                  "lightning.pytorch.strategies:FSDPStrategy", "lightning.pytorch.strategies:SingleDeviceStrategy",
                  "lightning.pytorch.plugins.precision:FSDPPrecision", "lightning.pytorch.plugins.precision:Precision",
                  "lightning.pytorch.trainer.states:TrainerFn"],
    "hydra-core": ["hydra:main", "hydra:compose", "hydra:initialize_config_dir", "hydra.utils:instantiate",
                   "hydra.errors:HydraException", "hydra.errors:InstantiationException",
                   "hydra.core.hydra_config:HydraConfig"],
    "omegaconf": ["omegaconf:DictConfig", "omegaconf:OmegaConf", "omegaconf.errors:OmegaConfBaseException",
                  "omegaconf.errors:MissingMandatoryValue"],
    "diffusers": ["diffusers:WanTransformer3DModel", "diffusers:AutoencoderKLWan", "diffusers:WanPipeline",
                  "diffusers:FlowMatchEulerDiscreteScheduler",
                  "diffusers.models.attention_dispatch:dispatch_attention_fn",
                  "diffusers.models.transformers.transformer_wan:_get_qkv_projections",
                  "diffusers.models.transformers.transformer_wan:WanAttnProcessor",
                  "diffusers.models.transformers.transformer_wan:WanTransformerBlock"],
    "accelerate": ["accelerate:init_empty_weights"],
    "transformers": ["transformers:AutoTokenizer", "transformers:UMT5EncoderModel", "transformers:UMT5Config"],
    "tokenizers": ["tokenizers:Tokenizer", "tokenizers.models:WordLevel", "tokenizers.pre_tokenizers:Whitespace"],
    "webdataset": ["webdataset.gopen:gopen", "webdataset.tariterators:group_by_keys",
                   "webdataset.tariterators:tar_file_iterator"],
    "braceexpand": ["braceexpand:braceexpand"],
    "numpy": ["numpy:stack", "numpy:ndarray"],
    "safetensors": ["safetensors.torch:load", "safetensors.torch:save", "safetensors.torch:load_file",
                    "safetensors.torch:save_file"],
    "torchmetrics": ["torchmetrics.functional.image:peak_signal_noise_ratio",
                     "torchmetrics.functional.image:structural_similarity_index_measure"],
    "wandb": ["wandb:init"],
    "av": ["av:open", "av:VideoFrame"],
    "tqdm": ["tqdm:tqdm", "tqdm.auto:tqdm"],
    "ftfy": ["ftfy:fix_text"],
    "hydra-submitit-launcher": ["hydra_plugins.hydra_submitit_launcher.submitit_launcher:SlurmLauncher",
                                "hydra_plugins.hydra_submitit_launcher.submitit_launcher:LocalLauncher"],
    "submitit": ["submitit:JobEnvironment", "submitit.helpers:TorchDistributedEnvironment"],
}
# Keyword arguments that arrived after the names did: the name alone would import from a too-old release.
USED_ARGUMENTS = {
    "diffusers": [("diffusers.models.attention_dispatch:dispatch_attention_fn", "parallel_config")],
}


def _requirements(with_extras=("test", "slurm")) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    reqs += [Requirement(r) for extra in with_extras for r in PYPROJECT["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def _get(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_installed_version_meets_the_lower_bound(req):
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{req.name} is not installed (pyproject: {req}); run scripts/install.sh")
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is too old for {req}"


@pytest.mark.parametrize("dist", sorted(USED))
def test_the_names_we_use_exist(dist):
    missing = []
    for spec in USED[dist]:
        try:
            _get(spec)
        except (ImportError, AttributeError) as err:
            missing.append(f"{spec} ({type(err).__name__}: {err})")
    for spec, argument in USED_ARGUMENTS.get(dist, []):
        if argument not in inspect.signature(_get(spec)).parameters:
            missing.append(f"{spec}({argument}=...)")
    assert not missing, f"{dist} {metadata.version(dist)} lacks: {missing}"


def _declared() -> set[str]:
    """The runtime dependencies and the slurm extra (the launcher in src/hydra_plugins/ needs it)."""
    return {Requirement(r).name.lower() for r in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["slurm"]}


def test_every_runtime_dependency_has_its_names_checked():
    declared = _declared()
    assert declared == set(USED), f"add to / remove from USED: {sorted(declared ^ set(USED))}"


def _third_party_imports() -> dict[str, str]:
    """Top-level module → a file importing it, for every non-stdlib import of the runtime code."""
    found = {}
    files = [p for root in RUNTIME_CODE for p in ([root] if root.is_file() else root.rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    declared = _declared()
    owners = metadata.packages_distributions()
    undeclared = {
        module: where for module, where in _third_party_imports().items()
        if not {d.lower() for d in owners.get(module, [module])} & declared
        and module not in OPTIONAL
    }
    extras = PYPROJECT["optional-dependencies"]
    assert all(extra in extras for extra in OPTIONAL.values()), "every optional import needs its extra"
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
