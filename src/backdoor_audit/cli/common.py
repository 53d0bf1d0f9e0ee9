"""What every `audit` command shares: one-line errors with exit 2, the data options, the cache."""

from __future__ import annotations

import functools
import os
import sys
import traceback

import click

from ..errors import AuditError

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "backdoor-audit")
#: `--precision` of `audit repair` and `audit bench repair`: repair.run.PRECISIONS, named here so
#: that the CLI does not import torch to parse its options (a test keeps the two equal)
PRECISION = click.Choice(["float32", "bf16"])


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def handle_errors(fn):
    """Turn bad input into exit 2 with one line; a bug also gets one line (traceback on request).
    click's own usage errors (a missing option, a bad value) pass through to click, which prints
    the usage line and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except AuditError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted")
        except BrokenPipeError:  # `audit ... | head`: the reader left; end quietly as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:  # noqa: BLE001  (never a bare traceback for the user)
            if os.environ.get("AUDIT_DEBUG"):
                traceback.print_exc()
            fail(f"internal error: {type(exc).__name__}: {exc} (set AUDIT_DEBUG=1 for the traceback)")

    return wrapper


def floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None


def data_options(required: bool = True):
    """The options every command that reads images shares (``--data`` optional where a command
    can run without data)."""

    def deco(fn):
        opts = [
            click.option("--data", "data", required=required, type=click.Path(),
                         help="npz (x/y or x_train/.../y_test), image folder (one subfolder per class) or zip"),
            click.option("--split", default=None, help="pick x_<split>/y_<split> of an npz, or the <split> subfolder"),
            click.option("--layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), default=None,
                         help="model input layout (default: from model metadata or input shape)"),
            click.option("--mean", default=None, help="per-channel mean after /255, e.g. 0.49,0.48,0.45"),
            click.option("--std", default=None, help="per-channel std after /255"),
            click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)"),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def load(data, split, limit=None, seed=0, data_layout=None, defender=False):
    """Images from ``data``; ``defender`` (repair, scan) refuses the test split, which is
    evaluation data."""
    from ..data import load_defender_images, load_images

    loader = load_defender_images if defender else load_images
    return loader(data, split=split, cache_dir=CACHE_DIR, layout=data_layout, pick=(limit, seed))


def load_training(path):
    """A model's training data: the train split of a source that has splits, else all of it."""
    from ..data import list_splits, load_images

    return load_images(path, split="train" if "train" in list_splits(path) else None, cache_dir=CACHE_DIR)
