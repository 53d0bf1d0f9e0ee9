"""A scan as SARIF 2.1.0, for code-scanning uploads (GitHub's and others').

One run per invocation; every finding of every scanned file is one result, located at the .onnx
file (a binary has no lines: GitHub's upload needs ``region.startLine``, so it is 1, and the node,
tensor or class the finding is about is a logical location). Each rule is a finding id with its
description; ``partialFingerprints`` hash the rule, the file's path as given and what the finding
is about (a node, a tensor, a class), not its message, so a rescan of the same file matches the
same alerts. A verdict of "backdoor suspected" that no finding carries (it always has one today)
would still not be lost: the verdict is in the run's properties.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "1.0"}

RULES = {
    "graph.trigger-branch": ("HiddenTriggerBranch", "A comparison on the raw input switches the logits with no "
                             "weight in between (an architectural backdoor such as ShadowLogic)."),
    "graph.code-execution": ("CodeExecutingOperator", "An operator runs Python code when the model runs."),
    "graph.foreign-domain": ("ForeignOperatorDomain", "An operator domain that is neither ONNX's nor onnxruntime's "
                             "needs native code from the vendor."),
    "graph.invalid": ("InvalidGraph", "The ONNX checker (full check, with shape inference) rejects the graph."),
    "file.external-data": ("UnsafeExternalData", "A tensor's external-data location escapes the model's folder, "
                           "is missing, or lies outside its file."),
    "nc.outlier-class": ("NeuralCleanseOutlier", "One class's reverse-engineered trigger is far smaller than the "
                         "others' (Neural Cleanse anomaly index): a backdoor target."),
    "mmbd.outlier-margin": ("MaximumMarginOutlier", "Synthetic images reach an outlying logit margin for one class "
                            "(MM-BD): a backdoor target, found without data."),
    "probe.collapse": ("PerturbationCollapse", "Under small neuron perturbations the clean errors collapse onto "
                       "one class (ANP's probe)."),
    "bnkl.outlier-channel": ("BatchNormStatisticsOutlier", "A BatchNorm channel's clean statistics diverge far "
                             "from its stored (training) ones, as a backdoor neuron's do (EP/BNP)."),
    "ban.noise-activated": ("NoiseActivatedBackdoor", "Under adversarial neuron noise, with the benign features "
                            "masked out, the clean images go to one class (BAN): a backdoor target."),
    "masks.near-zero": ("NearZeroAnpMasks", "ANP's mask optimisation drives some neurons' masks to near zero."),
}


def _subject(evidence: dict) -> str:
    """What a finding is about, for its fingerprint: a node, tensor, domain or class."""
    if "layer" in evidence:
        return f"layer={evidence['layer']}[{evidence.get('channel')}]"
    for key in ("node", "tensor", "domain", "class", "target"):
        if key in evidence:
            return f"{key}={evidence[key]}"
    if "classes" in evidence:
        return f"classes={evidence['classes']}"
    return ""


def _logical(evidence: dict) -> list[dict]:
    if "node" in evidence:
        return [{"name": str(evidence["node"]), "kind": "node"}]
    if "tensor" in evidence:
        return [{"name": str(evidence["tensor"]), "kind": "tensor"}]
    for key in ("class", "target"):
        if key in evidence:
            return [{"name": f"class {evidence[key]}", "kind": "class"}]
    return []


def _uri(model: str) -> str:
    p = Path(model)
    return p.as_posix() if not p.is_absolute() else p.as_uri()


def render_sarif(reports, *, command: str | None = None) -> str:
    """The SARIF 2.1.0 log (JSON text) of ``reports`` (ScanReport objects)."""
    used = sorted({f.id for r in reports for f in r.findings})
    index = {rid: i for i, rid in enumerate(used)}
    rules = []
    for rid in used:
        name, text = RULES.get(rid, (rid, rid))
        worst = max((f.severity for r in reports for f in r.findings if f.id == rid),
                    key=list(LEVEL).index, default="info")
        rules.append({"id": rid, "name": name, "shortDescription": {"text": text}, "fullDescription": {"text": text},
                      "help": {"text": f"{text} See docs/scan.md of backdoor-audit."},
                      "defaultConfiguration": {"level": LEVEL[worst]},
                      "properties": {"tags": ["security", "ml-model"], "security-severity": SECURITY_SEVERITY[worst]}})
    artifacts = [{"location": {"uri": _uri(r.model)}, "roles": ["analysisTarget"]} for r in reports]
    results = []
    for a, r in enumerate(reports):
        uri = _uri(r.model)
        for f in r.findings:
            location = {"physicalLocation": {"artifactLocation": {"uri": uri, "index": a},
                                             "region": {"startLine": 1}}}
            logical = _logical(f.evidence)
            if logical:
                location["logicalLocations"] = logical
            fingerprint = hashlib.sha256(f"{f.id}|{uri}|{_subject(f.evidence)}".encode()).hexdigest()[:32]
            results.append({"ruleId": f.id, "ruleIndex": index[f.id], "level": LEVEL[f.severity],
                            "message": {"text": f.message}, "locations": [location],
                            "partialFingerprints": {"backdoorAudit/v1": fingerprint},
                            "properties": {"severity": f.severity,
                                           "evidence": json.loads(json.dumps(f.evidence, default=str))}})
    run = {"tool": {"driver": {"name": "backdoor-audit", "version": __version__, "semanticVersion": __version__,
                               "rules": rules}},
           "artifacts": artifacts, "results": results,
           "invocations": [{"executionSuccessful": True, **({"commandLine": command} if command else {})}],
           "properties": {"verdicts": [{"model": r.model, "verdict": r.verdict, "suspected_target": r.suspected_target,
                                        "decided_by": r.decided_by, "reason": r.reason} for r in reports]}}
    return json.dumps({"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"
