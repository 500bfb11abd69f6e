"""`trainer.watch`: a look inside the model during training, written to TensorBoard at log
steps — the global gradient norm, chosen modules' activations (forward hooks) and chosen
parameters' gradients (tensor hooks). Off by default; off, it registers nothing."""
import torch
from torch import Tensor, nn

from builder.model_tools import trainable_matching
from utils.errors import ConfigError, did_you_mean

WATCH_KEYS = ("grad_norm", "activations", "grad_stats")


def watch_problems(value) -> list[str]:
    """The problems of a `trainer.watch` block a config alone shows."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"trainer.watch: expected {{\"grad_norm\": true, \"activations\": [\"conv1\"], "
                f"\"grad_stats\": [\"fc*.weight\"]}}, got {value!r}"]
    problems = [f"trainer.watch.{key}: unknown key (one of {', '.join(WATCH_KEYS)})"
                f"{did_you_mean(key, WATCH_KEYS)}" for key in value if key not in WATCH_KEYS]
    if not isinstance(value.get("grad_norm", False), bool):
        problems.append(f"trainer.watch.grad_norm: expected true or false, got "
                        f"{value['grad_norm']!r}")
    for key in ("activations", "grad_stats"):
        names = value.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            wanted = "module names" if key == "activations" else "parameter name patterns"
            problems.append(f"trainer.watch.{key}: expected a list of {wanted}, got {names!r}")
    return problems


def watch_targets(model: nn.Module, settings: dict | None) -> tuple[list[str], list[str],
                                                                  list[str]]:
    """The modules and the parameters `settings` names in `model`, and the problems (a name
    that is not there, a pattern that matches no parameter or only frozen ones)."""
    settings = settings or {}
    modules = [name for name, _ in model.named_modules() if name]
    activations = settings.get("activations", [])
    problems = [f"trainer.watch.activations.{index}: {name!r} is not a module of the model"
                f"{did_you_mean(name, modules)}"
                for index, name in enumerate(activations) if name not in modules]
    parameters, unmatched = trainable_matching(model, settings.get("grad_stats", []),
                                               "trainer.watch.grad_stats")
    return activations, parameters, problems + unmatched


class Watch:
    """Hooks on `model` that record only on the steps `recording` is set for (log steps), as
    device tensors (no host sync); `scalars()` reads them back. `attach` and `detach` add and
    remove every hook; the constructor only checks the names."""

    def __init__(self, model: nn.Module, settings: dict | None):
        self.model = model
        self.grad_norm = (settings or {}).get("grad_norm", False)
        self.activations, self.parameters, problems = watch_targets(model, settings)
        if problems:
            raise ConfigError(*problems)
        self.enabled = bool(self.grad_norm or self.activations or self.parameters)
        self.recording = False
        # what backward's gradients are multiplied by (the fp16 loss scale): the tensor hooks
        # see them before the scaler divides it out
        self.gradient_scale = 1.0
        self._handles = []
        self._values: dict[str, Tensor] = {}

    def attach(self) -> None:
        modules, parameters = dict(self.model.named_modules()), dict(self.model.named_parameters())
        for name in self.activations:
            self._handles.append(modules[name].register_forward_hook(
                lambda _module, _inputs, output, name=name: self._record_activation(name, output)))
        for name in self.parameters:
            self._handles.append(parameters[name].register_hook(
                lambda grad, name=name: self._record_gradient(name, grad)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _record_activation(self, name: str, output) -> None:
        if self.recording and isinstance(output, Tensor) and output.numel():
            output = output.detach().float()
            self._values[f"watch/activations/{name}/mean"] = output.mean()
            self._values[f"watch/activations/{name}/std"] = output.std() if output.numel() > 1 \
                else torch.zeros((), device=output.device)

    @torch.no_grad()
    def _record_gradient(self, name: str, grad: Tensor) -> None:
        """This micro-batch's gradient of the parameter (a tensor hook sees each backward's)."""
        if self.recording:
            grad = grad.detach().float() / self.gradient_scale
            self._values[f"watch/gradients/{name}/mean"] = grad.mean()
            self._values[f"watch/gradients/{name}/norm"] = torch.linalg.vector_norm(grad)

    def scalars(self) -> dict[str, float]:
        """What was recorded since the last call, plus the global gradient norm of the
        parameters' current gradients; as floats (one host transfer)."""
        values, self._values = self._values, {}
        if self.grad_norm:
            grads = [p.grad.detach().float() for p in self.model.parameters() if p.grad is not None]
            if grads:
                values["watch/grad_norm"] = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not values:
            return {}
        host = torch.stack([v.to(next(iter(values.values())).device) for v in values.values()])
        return dict(zip(values, host.tolist()))
