"""The scan as one self-contained HTML page: what a person would rather look at than read.

Per model: the verdict and who decided it; a table of the detectors (score, threshold, flag,
time); the findings by severity; and the plots each detector's evidence allows: Neural Cleanse's
per-class trigger mask norms with the anomaly threshold, and the reverse-engineered triggers
themselves; MM-BD's per-class maximum margins; ANP's perturbation curves (error rate and the
share of errors on one class per budget) and the ANP mask histogram per layer; the suspect
neurons. Plots are PNGs drawn with matplotlib (Agg, no display) and embedded as data: URIs, so
the page needs no network and no files beside it. Nothing here prints.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Iterable

import numpy as np

from .scan import ScanReport

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.verdict{font-size:1.2em;padding:.4em .8em;display:inline-block;border-radius:4px}
.suspected{background:#fdd} .clear{background:#dfd} .inconclusive{background:#eee}
.critical{color:#a00;font-weight:bold} .high{color:#c40} .medium{color:#960} .info,.low{color:#666}
figure{display:inline-block;margin:.5em 1em .5em 0} figcaption{font-size:.85em;color:#555}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(src: str, caption: str) -> str:
    cap = html.escape(caption)
    return f'<figure><img alt="{cap}" src="{src}"><figcaption>{cap}</figcaption></figure>'


def _bars(values: list[float], highlight: set[int], ylabel: str, title: str, line: float | None = None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    colors = ["#c33" if i in highlight else "#69c" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    if line is not None:
        ax.axhline(line, color="#555", linestyle="--", linewidth=1)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(values)))
    return _png(fig)


def _triggers(triggers) -> str:
    import matplotlib.pyplot as plt

    n = len(triggers)
    cols = min(n, 10)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, t in zip(axes.ravel(), triggers):
        img = (t.mask[None] * t.pattern).transpose(1, 2, 0)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{t.target}: {t.l1:.0f}", fontsize=8)
    return _png(fig)


def _probe_curves(points) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    eps = [p.eps for p in points]
    ax.plot(eps, [p.error_rate for p in points], "o-", label="clean error rate")
    ax.plot(eps, [p.top_share for p in points], "s--", label="share of errors on one class")
    ax.set_xlabel("neuron perturbation budget (eps)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("ANP perturbation probe", fontsize=10)
    return _png(fig)


def _mask_histograms(masks_by_layer: dict[str, np.ndarray]) -> str:
    import matplotlib.pyplot as plt

    names = list(masks_by_layer)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        ax.axis("on")
        ax.hist(masks_by_layer[name], bins=20, range=(0, 1), color="#69c")
        ax.set_title(name if len(name) <= 28 else "..." + name[-25:], fontsize=7)
        ax.tick_params(labelsize=6)
    return _png(fig)


def _rows(cells: Iterable[Iterable[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _model_section(rep: ScanReport) -> str:
    cls = {"backdoor suspected": "suspected", "no backdoor found": "clear"}.get(rep.verdict, "inconclusive")
    target = "" if rep.suspected_target is None else f", suspected target class {rep.suspected_target}"
    out = [f"<h2>{html.escape(rep.model)}</h2>",
           f'<p><span class="verdict {cls}">{html.escape(rep.verdict.upper())}{target}</span></p>',
           f"<p>{'decided by <b>' + html.escape(rep.decided_by) + '</b>: ' if rep.decided_by else ''}"
           f"{html.escape(rep.reason)} ({rep.seconds:.1f} s; {rep.n_clean} clean images)</p>",
           "<table><tr><th>detector</th><th>score</th><th>threshold</th><th>flagged</th><th>target</th>"
           "<th>seconds</th><th>peak MB</th></tr>",
           _rows((html.escape(d.detector), _fmt(d.score), _fmt(d.threshold), _fmt(d.flagged), _fmt(d.target),
                  f"{d.seconds:.1f}", f"{d.peak_mb:.0f}") for d in rep.detections), "</table>"]
    if rep.findings:
        out += ["<h3>Findings</h3><table><tr><th>severity</th><th>id</th><th>message</th></tr>",
                _rows((f'<span class="{html.escape(f.severity)}">{html.escape(f.severity)}</span>',
                       html.escape(f.id), html.escape(f.message)) for f in rep.findings), "</table>"]
    figures = []
    for d in rep.detections:
        if d.detector == "neural-cleanse" and "mask_l1" in d.evidence:
            flagged = {i for i, a in enumerate(d.evidence["anomaly_index"]) if d.threshold and a > d.threshold}
            figures.append(_figure(_bars(d.evidence["mask_l1"], flagged, "trigger mask L1",
                                         "Neural Cleanse: smallest trigger per class"),
                                   "per-class trigger mask norms (red: anomaly index above the threshold)"))
            if d.artifacts.get("triggers"):
                figures.append(_figure(_triggers(d.artifacts["triggers"]),
                                       "reverse-engineered triggers (mask x pattern), class: mask L1"))
        elif d.detector == "mm-bd" and "margins" in d.evidence:
            top = {d.target} if d.target is not None else set()
            p = d.evidence.get("p_value", float("nan"))
            figures.append(_figure(_bars(d.evidence["margins"], top, "max margin", "MM-BD: maximum margin per class"),
                                   f"per-class maximum margins (p-value {p:.3g})"))
        elif d.detector == "anp-probe" and d.evidence.get("probe"):
            figures.append(_figure(_probe_curves(d.evidence["probe"]), "ANP probe: errors under neuron perturbation"))
            if d.artifacts.get("masks_by_layer"):
                figures.append(_figure(_mask_histograms(d.artifacts["masks_by_layer"]),
                                       "ANP masks per layer (low: neurons the clean task does not need)"))
    if figures:
        out += ["<h3>Evidence</h3>", *figures]
    neurons = [(d.detector, n) for d in rep.detections for n in d.neurons]
    if neurons:
        out += ["<h3>Suspect neurons</h3><table><tr><th>detector</th><th>layer</th><th>neuron</th><th>value</th></tr>",
                _rows((html.escape(det), html.escape(str(n[0])), str(n[1]), _fmt(n[2])) for det, n in neurons[:40]),
                "</table>"]
    return "\n".join(out)


def render_html(reports: list[ScanReport], title: str = "backdoor-audit scan") -> str:
    """One self-contained page for the scanned models."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    body = "\n".join(_model_section(r) for r in reports)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
