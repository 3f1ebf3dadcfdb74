"""The demonstrator's HTML pages: server-rendered, a little JavaScript, no build step.

Every value from a job, a manifest or a client is escaped (:func:`html.escape`).
Element ids and classes are part of the interface (the browser test and users'
scripts find them): ``#separate-form``, ``#file``, ``#uri``, ``#model``, ``#submit``;
on a result page ``#state``, ``#progress``, ``#player-mixture``, ``audio.stem-player``,
``img.spectrogram``, ``a.download``, ``#download-all``, ``#elapsed``, ``#error``.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2937;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#e5e7eb;text-decoration:none}header a.here{color:#fff;font-weight:600}
header .brand{font-weight:700;color:#fff}
main{max-width:1100px;margin:1.2em auto;padding:0 1.2em}
fieldset{border:1px solid #ddd;border-radius:6px;margin:0 0 1em;background:#fff}
label{margin-right:1em}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.stem{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.6em 0}
.stem h3{margin:.1em 0 .4em}.stem img{width:100%;height:160px;image-rendering:auto;display:block}
audio{width:100%}.muted{color:#666}.error{color:#b91c1c}
button{font-size:1em;padding:.4em 1.2em}progress{width:100%}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:0 0 1em}
"""

NAV = (("/", "Separate"), ("/library", "Library"), ("/models", "Models"))


def layout(title: str, body: str, here: str = "", head: str = "") -> str:
    links = "".join(f'<a href="{href}"{" class=here" if href == here else ""}>{name}</a>' for href, name in NAV)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · sep</title>"
            f'<meta name=viewport content="width=device-width,initial-scale=1"><style>{STYLE}</style>{head}</head>'
            f'<body><header><span class=brand>sep</span>{links}</header><main>{body}</main></body></html>')  # fmt: skip


def separate_page(cards: list[dict[str, Any]], cfg: Any) -> str:
    """The upload form: a file or an allowed URI, the model, its stems."""
    options = "".join(f'<option value="{escape(c["name"])}">{escape(c["name"])} ({escape(", ".join(c["stems"]))})</option>'
                      for c in cards)  # fmt: skip
    stem_boxes = "".join(
        f'<span class=stems data-model="{escape(c["name"])}"{"" if i == 0 else " hidden"}>'
        + "".join(f'<label><input type=checkbox name=stems value="{escape(s)}" checked{"" if i == 0 else " disabled"}> {escape(s)}</label>'
                  for s in c["stems"]) + "</span>"
        for i, c in enumerate(cards))  # fmt: skip
    prefixes = ", ".join(f"<code>{escape(p)}</code>" for p in cfg.allowed_prefixes)
    uri_box = (f'<p><label>or a URI below {prefixes}: <input type=text id=uri name=uri size=60></label></p>'
               if prefixes else '<input type=hidden id=uri name=uri value="">')  # fmt: skip
    body = f"""<h1>Separate a song</h1>
<form id=separate-form method=post action="/separate" enctype="multipart/form-data">
<fieldset><legend>Input</legend>
<p><label>Audio file: <input type=file id=file name=file accept="audio/*,.flac,.wav,.mp3,.ogg,.opus,.m4a,.aiff"></label></p>
{uri_box}
<p class=muted>At most {cfg.max_upload_mb:g} MiB and {cfg.max_seconds:g} s of audio. Results are kept
{cfg.results_ttl_hours:g} h.</p></fieldset>
<fieldset><legend>Model</legend><p><select id=model name=model>{options}</select></p>
<p>Stems: {stem_boxes}</p></fieldset>
<button id=submit type=submit>Separate</button> <span id=sending class=muted hidden>uploading…</span>
</form>
<script>
const form=document.getElementById('separate-form'), model=document.getElementById('model');
function stems(){{for(const s of document.querySelectorAll('.stems')){{const on=s.dataset.model===model.value;
 s.hidden=!on;for(const b of s.querySelectorAll('input'))b.disabled=!on;}}}}
model.addEventListener('change',stems);stems();
form.addEventListener('submit',()=>{{document.getElementById('sending').hidden=false;
 document.getElementById('submit').disabled=true;}});
</script>"""
    return layout("Separate", body, "/")


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f} s"


def _when(epoch: Any) -> str:
    if not epoch:
        return ""
    return dt.datetime.fromtimestamp(float(epoch), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_page(job: dict[str, Any], api: dict[str, Any]) -> str:
    """A job's page: progress while it runs (polling ``/api/jobs/<id>``), players, spectrograms
    and downloads when done, the message when it failed."""
    job_id, state = escape(job["id"]), job["state"]
    title = f"{job.get('input_name', '')} · {job.get('model', '')}"
    head = f"<p class=muted>{escape(job.get('input_name', ''))} · model <b>{escape(job.get('model', ''))}</b> · created {_when(job.get('created'))}</p>"
    if state in ("queued", "running"):
        body = f"""<h1>Separating…</h1>{head}
<p>State: <span id=state>{escape(state)}</span> · <span id=waited>0</span> s
{f"· {float(job['duration_s']):.1f} s of audio" if job.get("duration_s") else ""}</p><progress id=progress></progress>
<script>
const t0=Date.now();setInterval(()=>{{document.getElementById('waited').textContent=Math.round((Date.now()-t0)/1000)}},500);
async function poll(){{const r=await fetch('/api/jobs/{job_id}');const j=await r.json();
 if(j.state)document.getElementById('state').textContent=j.state;
 if(!r.ok||j.state==='done'||j.state==='error'){{location.reload();return}} setTimeout(poll,700)}}
setTimeout(poll,500);
</script>"""
        return layout(title, body)
    if state == "error":
        body = f'<h1>Separation failed</h1>{head}<p id=error class=error>{escape(str(job.get("error")))}</p><p><a href="/">Try another file</a></p>'
        return layout(title, body)
    players = [_player("mixture", api["mixture"], api["spectrograms"].get("mixture"), mixture=True)]
    players += [_player(stem, url, api["spectrograms"].get(stem)) for stem, url in api["stems"].items()]
    body = f"""<h1>Stems</h1>{head}
<p>Separated {float(job.get("duration_s") or 0):.1f} s of audio in <span id=elapsed>{float(job.get("seconds") or 0):.2f}</span> s
(on the replica; {_seconds((job.get("finished") or 0) - (job.get("created") or 0))} from upload to result).
<a id=download-all href="{escape(api["zip"])}" download>Download all stems (zip)</a></p>
{"".join(players)}"""
    return layout(title, body)


def _player(name: str, url: str, picture: str | None, mixture: bool = False) -> str:
    n, u = escape(name), escape(url)
    audio = (f'<audio id=player-mixture controls preload=metadata src="{u}"></audio>' if mixture else
             f'<audio class=stem-player data-stem="{n}" controls preload=metadata src="{u}"></audio>')  # fmt: skip
    img = f'<img class=spectrogram data-stem="{n}" alt="spectrogram of {n}" src="{escape(picture)}">' if picture else ""
    link = "" if mixture else f' · <a class=download data-stem="{n}" href="{u}" download>download</a>'
    return f'<div class=stem><h3>{n}{link}</h3>{audio}{img}</div>'


def library_page(runs: list[dict[str, Any]]) -> str:
    """Each configured separate output: counts, errors, files with their stems' players."""
    if not runs:
        return layout("Library", "<h1>Library</h1><p class=muted>No separate outputs are configured "
                      "(<code>library_outputs</code>).</p>", "/library")  # fmt: skip
    parts = ["<h1>Library</h1>"]
    for i, run in enumerate(runs):
        c = run["counts"]
        parts.append(f'<section class=card id="run-{i}"><h2><code>{escape(run["output"])}</code></h2>')
        if run.get("error"):
            parts.append(f'<p class=error>{escape(run["error"])}</p>')
        parts.append(f'<p class=counts>ok <b class=ok>{c.get("ok", 0)}</b> · error <b class=errors>{c.get("error", 0)}</b> · '
                     f'skipped <b class=skipped>{c.get("skipped", 0)}</b>'
                     f'{" · finished " + escape(str(run["finished"])) if run.get("finished") else ""}</p>')  # fmt: skip
        if run["errors"]:
            rows = "".join(f'<tr><td>{escape(e["relative"])}</td><td>{escape(str(e["error_class"]))}</td>'
                           f'<td>{escape(str(e["error"]))}</td></tr>' for e in run["errors"])  # fmt: skip
            parts.append(f"<h3>Errors</h3><table class=library-errors><tr><th>file</th><th>error</th><th>message</th></tr>{rows}</table>")
        for f in run["files"]:
            players = "".join(f'<div><span>{escape(stem)}</span> <audio controls preload=none '
                              f'src="/library/{i}/{f["index"]}/{quote(stem)}"></audio></div>' for stem in f["stems"])  # fmt: skip
            parts.append(f'<details class=library-file><summary>{escape(f["relative"])} '
                         f'<span class=muted>{_seconds(f.get("duration_s"))}</span></summary>{players}</details>')  # fmt: skip
        parts.append("</section>")
    return layout("Library", "".join(parts), "/library")


def models_page(cards: list[dict[str, Any]]) -> str:
    parts = ["<h1>Models</h1>"]
    for card in cards:
        facts = [("checkpoint", card["checkpoint"]), ("model", card.get("model")), ("kind", card.get("kind")),
                 ("model id", card.get("model_id")), ("target", card.get("target")),
                 ("stems", ", ".join(card["stems"])), ("sample rate", card.get("sample_rate")),
                 ("channels", card.get("channels")), ("training data", card.get("training_data")),
                 ("epochs", card.get("epochs"))]  # fmt: skip
        rows = "".join(f"<tr><th>{k}</th><td>{escape(str(v))}</td></tr>" for k, v in facts if v not in (None, ""))
        parts.append(f'<section class="card model-card" data-model="{escape(card["name"])}"><h2>{escape(card["name"])}</h2>'
                     f"<table>{rows}</table>{_evaluation(card.get('evaluation'))}</section>")  # fmt: skip
    return layout("Models", "".join(parts), "/models")


def _evaluation(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "<p class=muted>No evaluation configured (<code>evaluation</code>).</p>"
    if ev.get("error"):
        return f'<p class=error>{escape(ev["error"])}</p>'
    head = (f'<h3>Evaluation</h3><p class=muted>{escape(str(ev.get("tracks")))} tracks of the '
            f'{escape(str(ev.get("split")))} split of <code>{escape(str(ev.get("data")))}</code>; medians, dB</p>')  # fmt: skip
    rows = "".join(f'<tr><td>{escape(r["class"])}</td><td>{escape(r["method"])}</td><td>{escape(r["stem"])}</td>'
                   + "".join(f'<td class=num>{"" if r[f] is None else f"{r[f]:.2f}"}</td>' for f in ("sdr", "sir", "sar"))
                   + "</tr>" for r in ev["rows"])  # fmt: skip
    return (f"{head}<table class=evaluation><tr><th>class</th><th>method</th><th>stem</th><th>SDR</th>"
            f"<th>SIR</th><th>SAR</th></tr>{rows}</table>")


def message_page(status: int, message: str) -> str:
    body = f'<h1>{status}</h1><p id=error class=error>{escape(message)}</p><p><a href="/">Back to the upload form</a></p>'
    return layout(str(status), body)
