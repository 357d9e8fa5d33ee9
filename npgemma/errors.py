"""One family of errors, so the CLI can print a single clear line for any bad input."""


class NpgemmaError(Exception):
    """Base class: the message names the culprit (file, key, shape, value) and what was expected."""


class ConfigError(NpgemmaError, ValueError):
    """A config.json npgemma cannot run."""


class WeightsError(NpgemmaError, ValueError):
    """Missing, unexpected, wrong-shape or unreadable tensors in a checkpoint."""


class InputError(NpgemmaError, ValueError):
    """A bad image, prompt, tokenizer file or generation argument."""


class Unsupported(InputError):
    """An implementation checked with `--against` declines a case by design (its adapter raised
    NotImplementedError with the reason): not a wrong answer, and not a pass either."""


class NonFiniteError(NpgemmaError, FloatingPointError):
    """A NaN or an Inf where a number must be finite (a weight, an activation, the logits a
    token would be chosen from): the run stops instead of answering from it."""
