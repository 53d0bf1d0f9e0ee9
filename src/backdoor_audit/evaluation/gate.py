"""`audit validate`: ACC/ASR under onnxruntime and the CI gate on them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..attacks.spec import load_spec
from ..data import ImageSet
from ..graph.load import load_model
from ..inputs import model_preprocess
from .evaluate import evaluate


@dataclass
class ValidateResult:
    model: str
    acc: float
    asr: float | None
    n: int
    n_asr: int
    provider: str
    attack: dict | None
    passed: bool
    gate_messages: list[str] = field(default_factory=list)
    #: per true class (``per_class=True`` only): ACC, and ASR over the images the ASR counts
    acc_by_class: dict[int, float] | None = None
    asr_by_class: dict[int, float] | None = None
    #: ASR over the counted images the model gets right without the trigger (see EvalResult)
    asr_clean_correct: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def validate_model(model_path, images: ImageSet, attack=None, layout=None, mean=None, std=None,
                   min_acc: float | None = None, max_asr: float | None = None,
                   per_class: bool = False) -> ValidateResult:
    proto = load_model(model_path)
    spec = load_spec(attack) if attack else None
    pre = model_preprocess(proto, images, layout=layout, mean=mean, std=std)
    res = evaluate(model_path, images, pre, spec)
    messages, passed = [], True
    if min_acc is not None:
        ok = res.acc >= min_acc
        passed &= ok
        messages.append(f"{'pass' if ok else 'FAIL'}: ACC {res.acc:.2f}% {'>=' if ok else '<'} {min_acc}%")
    if max_asr is not None:
        if res.asr is None:
            passed = False
            messages.append("FAIL: --max-asr needs --attack (no ASR measured)")
        else:
            ok = res.asr <= max_asr
            passed &= ok
            messages.append(f"{'pass' if ok else 'FAIL'}: ASR {res.asr:.2f}% {'<=' if ok else '>'} {max_asr}%")
    return ValidateResult(str(model_path), res.acc, res.asr, res.n, res.n_asr, res.provider,
                          None if spec is None else {"attack": spec.attack, "mode": spec.mode,
                                                     "target": spec.target},
                          bool(passed), messages,
                          acc_by_class=res.acc_by_class if per_class else None,
                          asr_by_class=(res.asr_by_class if res.asr is not None else None) if per_class else None,
                          asr_clean_correct=res.asr_clean_correct)
