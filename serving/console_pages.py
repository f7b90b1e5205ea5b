"""The analyst console's HTML: Jinja2 templates with autoescaping on (every value is HTML-escaped) and its CSS."""

from __future__ import annotations

from jinja2 import DictLoader, Environment, StrictUndefined
from markupsafe import Markup

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · fraud console</title><link rel="stylesheet" href="{{ root }}/console.css"></head>
<body>
<header><span class="brand">Fraud &amp; risk console</span>
{% if principal %}<nav>
<a href="{{ root }}/queue" class="{{ 'on' if view == 'queue' }}">Review queue</a>
<a href="{{ root }}/score" class="{{ 'on' if view == 'score' }}">Score a transaction</a>
<a href="{{ root }}/batch" class="{{ 'on' if view == 'batch' }}">Batch CSV</a></nav>
<form method="post" action="{{ root }}/logout" class="who"><span id="principal">{{ principal.name }}</span>
<input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Log out</button></form>{% endif %}
</header>
<main>
<h1>{{ title }}</h1>
{% for kind, text in notices %}<p class="notice {{ kind }}" role="status">{{ text }}</p>{% endfor %}
{% block content %}{% endblock %}
</main></body></html>
"""

LOGIN = """{% extends "base" %}{% block content %}
<form method="post" action="{{ root }}/login" class="card narrow">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit" id="login">Log in</button>
<p class="hint">A bearer token of <code>api.tokens</code>; its scopes apply: <code>read</code> for the queue,
<code>score</code> for scoring and labelling.</p>
</form>{% endblock %}
"""

QUEUE = """{% extends "base" %}{% block content %}
<p class="summary">{{ total }} transaction{{ '' if total == 1 else 's' }} to review, oldest first
{%- if total %} · showing {{ first }} to {{ last }}{% endif %}.</p>
{% if not rows %}<p class="empty">Nothing to review.</p>{% endif %}
{% for r in rows %}
<section class="card item" id="item-{{ loop.index }}" data-transaction="{{ r.transaction_id }}">
<div class="head"><code class="tx">{{ r.transaction_id }}</code>
<span class="score">score {{ '%.1f' | format(r.score) }}</span>
<span>{{ r.event_time.strftime('%Y-%m-%d %H:%M:%S') }} UTC</span>
<span>card <code>{{ r.card_id }}</code></span>
<span>model {{ r.model_name or '—' }} v{{ r.model_version or '—' }}</span>
<span>driver {{ r.driver or '—' }}</span></div>
<div class="reasons">{% for x in r.reasons %}<span class="chip">{{ x }}</span>{% else %}<span class="muted">no reasons
</span>{% endfor %}{% for x in r.triggered_rules %}<span class="chip rule">{{ x }}</span>{% endfor %}</div>
<table class="history"><caption>the card's recent decisions</caption>
<tr><th>time (UTC)</th><th>transaction</th><th>decision</th><th>score</th><th>reasons</th></tr>
{% for h in r.history %}<tr class="{{ 'this' if h.transaction_id == r.transaction_id }}">
<td>{{ h.event_time.strftime('%Y-%m-%d %H:%M:%S') }}</td><td><code>{{ h.transaction_id }}</code></td>
<td>{{ decision(h.decision) }}</td><td>{{ '%.1f' | format(h.score) }}</td><td>{{ h.reasons | join(', ') }}</td></tr>
{% endfor %}</table>
{% if can_label %}<form method="post" action="{{ root }}/label" class="verdict">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="transaction_id"
value="{{ r.transaction_id }}"><input type="hidden" name="page" value="{{ page }}">
<button name="label" value="fraud" class="fraud">Mark fraud</button>
<button name="label" value="genuine" class="genuine">Mark genuine</button></form>{% endif %}
</section>{% endfor %}
<nav class="pages">{% if page > 1 %}<a href="{{ root }}/queue?page={{ page - 1 }}">← previous page</a>{% endif %}
{% if last < total %}<a href="{{ root }}/queue?page={{ page + 1 }}" id="next">next page →</a>{% endif %}</nav>
{% endblock %}
"""

SCORE = """{% extends "base" %}{% block content %}
<div class="columns"><form method="post" action="{{ root }}/score" class="card fields" id="score-form">
<input type="hidden" name="csrf" value="{{ csrf }}">
{% for f in fields %}<label for="f-{{ f.name }}">{{ f.name }}{% if f.required %} *{% endif %}</label>
{% if f.choices %}<select id="f-{{ f.name }}" name="{{ f.name }}">{% for c in f.choices %}
<option value="{{ c }}"{{ ' selected' if c == values.get(f.name, '') }}>{{ c if c != '' else '—' }}</option>{% endfor %}
</select>{% else %}<input id="f-{{ f.name }}" name="{{ f.name }}" value="{{ values.get(f.name, '') }}">{% endif %}
{% if errors.get(f.name) %}<span class="error">{{ errors[f.name] }}</span>{% endif %}
{% endfor %}
<button type="submit" id="score">Score</button></form>
{% if result %}<section class="card result" id="result">
<p>{{ decision(result.decision) }} <span class="big">{{ '%.1f' | format(result.score) }}</span> / 100
· driver {{ result.driver or '—' }}</p>
<table><tr><th>rules</th><th>statistical</th><th>ML</th><th>anomaly</th></tr><tr>
{% for t in (result.tier_scores.rules, result.tier_scores.statistical, result.tier_scores.ml,
result.tier_scores.anomaly) %}<td>{{ '—' if t is none else '%.1f' | format(t) }}</td>{% endfor %}</tr></table>
<p>reasons: {% for x in result.reasons %}<span class="chip">{{ x }}</span>{% else %}none{% endfor %}</p>
<p>rules: {% for x in result.triggered_rules %}<span class="chip rule">{{ x }}</span>{% else %}none{% endfor %}</p>
<p>model {{ result.model.name or '—' }} v{{ result.model.version or '—' }} ({{ result.model.route or '—' }})
{% if result.shadow %}· shadow v{{ result.shadow.version }}: {{ result.shadow.decision }}{% endif %}</p>
<p>features {{ result.features_status }}{% if result.degraded_reason %}: {{ result.degraded_reason }}{% endif +%}
· {{ '%.1f' | format(result.latency_ms) }} ms</p></section>{% endif %}</div>
{% endblock %}
"""

BATCH = """{% extends "base" %}{% block content %}
<form method="post" action="{{ root }}/batch" enctype="multipart/form-data" class="card">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="file">CSV file: a header line of the transaction's fields, at most {{ max_rows }} rows</label>
<input id="file" name="file" type="file" accept=".csv,text/csv" required>
<button type="submit" id="upload">Score the file</button>
<p class="hint">Columns: {% for f in fields %}<code>{{ f.name }}</code>{{ '*' if f.required }} {% endfor %}
(* required; <code>event_time</code> in epoch milliseconds or ISO-8601).</p></form>
{% if results is not none %}<section class="card" id="results">
<p class="summary">{{ scored }} scored, {{ failed }} refused of {{ results | length }} rows.
{% if download %}<a href="{{ download }}" id="download" download>Download the results (CSV)</a>{% endif %}</p>
<table><tr><th>row</th><th>transaction</th><th>decision</th><th>score</th><th>reasons</th><th>error</th></tr>
{% for n, s, tx_id, error in results %}<tr class="{{ 'refused' if error }}"><td>{{ n }}</td>
{% if s %}<td><code>{{ s.transaction_id }}</code></td><td>{{ decision(s.decision) }}</td>
<td>{{ '%.1f' | format(s.score) }}</td><td>{{ s.reasons | join(', ') }}</td><td></td>
{% else %}<td><code>{{ tx_id or '' }}</code></td><td></td><td></td><td></td>
<td class="error">{{ error }}</td>{% endif %}
</tr>{% endfor %}</table></section>{% endif %}
{% endblock %}
"""

ERROR = """{% extends "base" %}{% block content %}<p class="card">{{ message }}</p>
<p><a href="{{ root }}/queue">Back to the queue</a></p>{% endblock %}
"""

CSS = """
:root { --ink: #1d2733; --muted: #6b7785; --line: #d5dbe3; --bg: #f3f5f8; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: var(--bg); }
header { display: flex; gap: 24px; align-items: center; padding: 10px 24px; background: #16324f; color: #fff; }
header a { color: #cfe0f5; text-decoration: none; margin-right: 16px; }
header a.on { color: #fff; border-bottom: 2px solid #ffb300; }
.brand { font-weight: 700; } .who { margin-left: auto; display: flex; gap: 8px; align-items: center; }
main { padding: 16px 24px; max-width: 1200px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 0 0 12px; }
.narrow { max-width: 420px; display: grid; gap: 8px; }
.head { display: flex; flex-wrap: wrap; gap: 16px; align-items: baseline; }
.tx { font-weight: 700; font-size: 15px; } .score { color: #b45309; font-weight: 700; }
.chip { display: inline-block; background: #e8eefb; color: #1f3f7a; border-radius: 10px; padding: 0 8px;
        margin: 4px 4px 0 0; font-size: 12px; }
.chip.rule { background: #fdecc8; color: #7a4b00; }
table { border-collapse: collapse; margin: 8px 0; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); font-size: 13px; }
caption { text-align: left; color: var(--muted); font-size: 12px; }
tr.this { background: #fff7e0; } tr.refused { background: #fdecec; }
.decision { font-weight: 700; text-transform: uppercase; font-size: 12px; padding: 1px 6px; border-radius: 4px; }
.decision.approve { background: #dcf3e3; color: #166534; } .decision.review { background: #fff1c2; color: #8a5a00; }
.decision.block { background: #fbd5d5; color: #9b1c1c; }
button { font: inherit; padding: 5px 12px; border-radius: 4px; border: 1px solid var(--accent);
         background: var(--accent); color: #fff; cursor: pointer; }
button.fraud { background: #b91c1c; border-color: #b91c1c; }
button.genuine { background: #15803d; border-color: #15803d; }
.who button { background: transparent; border-color: #cfe0f5; }
.verdict { display: flex; gap: 8px; margin-top: 6px; }
.fields { display: grid; grid-template-columns: 200px 240px 1fr; gap: 6px 10px; align-items: center; }
.fields label { grid-column: 1; } .fields input, .fields select { grid-column: 2; padding: 3px 6px; }
.fields .error { grid-column: 3; } .fields button { grid-column: 2; justify-self: start; }
.columns { display: grid; grid-template-columns: minmax(0, 1.3fr) minmax(0, 1fr); gap: 16px; align-items: start; }
.error { color: #b91c1c; } .muted, .hint, .summary { color: var(--muted); } .big { font-size: 28px; font-weight: 700; }
.notice { padding: 8px 12px; border-radius: 4px; } .notice.ok { background: #dcf3e3; }
.notice.bad { background: #fdecec; color: #9b1c1c; }
.pages { display: flex; gap: 16px; }
"""

ENV = Environment(
    loader=DictLoader({"base": BASE, "login": LOGIN, "queue": QUEUE, "score": SCORE, "batch": BATCH, "error": ERROR}),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
)


def decision(d: str) -> Markup:
    """A decision as a coloured badge (``Markup.format`` escapes ``d``)."""
    return Markup('<span class="decision {0}">{0}</span>').format(d)


ENV.globals["decision"] = decision


def render(name: str, **context: object) -> str:
    """The page ``name`` with ``context`` (every value escaped)."""
    return ENV.get_template(name).render(**context)
