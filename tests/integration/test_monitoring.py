"""The Prometheus alert rules and the Grafana dashboard (contrib/): promtool
checks and unit-tests the rules, and every metric and label their PromQL
names is one a running daemon really exports (scraped from /metrics)."""

import json
import os
import re
import subprocess
import urllib.request

from harness import ROOT, Daemon, message

RULES = os.path.join(ROOT, "contrib", "prometheus", "tgwebhookd-rules.yml")
RULES_TEST = os.path.join(ROOT, "contrib", "prometheus",
                          "tgwebhookd-rules.test.yml")
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "tgwebhookd.json")

# Series Prometheus makes itself, and labels it adds to every scraped one.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"instance", "job"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "and", "or", "unless", "inf", "nan"}


def _strip(expr):
    """expr without string literals, Grafana variables and range or
    subquery brackets, which hold no metric names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "1", expr)
    return re.sub(r"\[[^\]]*\]", "", expr)


def selectors(expr):
    """{metric name: set of label names matched on it} for every vector
    selector in a PromQL expression."""
    found = {}
    s = _strip(expr)
    # label lists of by/without/on/ignoring/group_*: names, not metrics
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*"
               r"\([^)]*\)", " ", s)
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?"
                         r"(\s*\()?", s):
        name, braces, call = m.group(1), m.group(2), m.group(3)
        start = m.start(1)
        if start > 0 and (s[start - 1].isalnum() or s[start - 1] in "_."):
            continue        # inside a number (1e3) or a longer word
        if call and not braces:
            continue        # a function or an aggregation
        if name.lower() in KEYWORDS or re.fullmatch(r"\d.*", name):
            continue
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)",
                                braces or ""))
        found.setdefault(name, set()).update(labels)
    return found


def grouping_labels(expr):
    """{metric: labels} for by (...) clauses: the labels an aggregation
    groups by, for each metric inside the aggregated expression."""
    out = {}
    s = _strip(expr)
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", s):
        labels = {x.strip() for x in m.group(1).split(",") if x.strip()}
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"(": 1, ")": -1}.get(s[i], 0)
            i += 1
        for name in selectors(s[m.end():i - 1]):
            out.setdefault(name, set()).update(labels)
    return out


def rule_exprs():
    import yaml
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [(r["alert"], r["expr"]) for g in doc["groups"]
            for r in g["rules"]]


def dashboard_exprs():
    """(where, expr) of every query in the dashboard: panel targets and
    the template variables' queries."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append(("panel %r" % p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) \
                else v["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert inner, "variable %s: unexpected query %r" % (v["name"], q)
            out.append(("variable %s" % v["name"],
                        "%s{%s=\"\"}" % (inner.group(1), inner.group(2))))
    return out


def exposition(text):
    """{sample name: set of label names} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s", line)
        assert m, "not a sample line: %r" % line
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=\"", m.group(3)
                                or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


def problems(exprs, exported):
    """What in exprs the exposition does not have, one line each."""
    out = []
    for where, expr in exprs:
        names = selectors(expr)
        if not names:
            out.append("%s: no metric found in %r" % (where, expr))
        for name, labels in list(names.items()) + list(
                grouping_labels(expr).items()):
            if name in PROMETHEUS_OWN:
                continue
            if name not in exported:
                out.append("%s: %s is not exported by the daemon" %
                           (where, name))
                continue
            missing = labels - exported[name] - TARGET_LABELS
            if missing:
                out.append("%s: %s has no label %s" %
                           (where, name, ", ".join(sorted(missing))))
    return out


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=5) as r:
        return r.read().decode()


def test_promql_names_are_parsed():
    """The parser finds metric names and their labels, and nothing else."""
    assert selectors('sum by (type, result) (rate(tgwebhookd_updates_total'
                     '{instance=~"$instance", result!="ok"}[$__rate_interval]'
                     '))') == {"tgwebhookd_updates_total":
                               {"instance", "result"}}
    assert selectors("a_seconds - time() < 14 * 86400 and on(instance) "
                     "b > 1e3 or histogram_quantile(0.9, c_bucket[5m])") == \
        {"a_seconds": set(), "b": set(), "c_bucket": set()}
    assert grouping_labels("sum by (le) (rate(h_bucket[1m])) / "
                           "sum by (x) (y)") == {"h_bucket": {"le"},
                                                 "y": {"x"}}
    exported = {"m_total": {"result"}}
    assert problems([("r", 'm_total{result="ok"}')], exported) == []
    assert problems([("r", 'rate(m_total{status="ok"}[5m])'),
                     ("d", "tgwebhookd_no_such_metric > 0"),
                     ("e", 'sum by (method) (m_total)')], exported) == [
        "r: m_total has no label status",
        "d: tgwebhookd_no_such_metric is not exported by the daemon",
        "e: m_total has no label method"]


def test_promtool_checks_and_tests_the_rules():
    for args in (["check", "rules", RULES], ["test", "rules", RULES_TEST]):
        p = subprocess.run(["promtool"] + args, capture_output=True,
                           text=True, cwd=os.path.dirname(RULES))
        assert p.returncode == 0 and "SUCCESS" in p.stdout, \
            "promtool %s:\n%s%s" % (" ".join(args), p.stdout, p.stderr)
    names = [n for n, _ in rule_exprs()]
    with open(RULES_TEST) as f:
        tested = set(re.findall(r"alertname: (\w+)", f.read()))
    assert set(names) == tested, "alerts without a promtool test: %s" % (
        set(names) - tested)


def check_against(text):
    """Asserts every rule and dashboard query names what text exports."""
    exported = exposition(text)
    exprs = rule_exprs() + dashboard_exprs()
    assert len(exprs) >= 20
    bad = problems(exprs, exported)
    assert not bad, "\n".join(bad) + "\n\n/metrics:\n" + text


def test_rules_and_dashboard_name_exported_metrics():
    handlers = "[handler.start]\ncommands = /start\nreply = hi\n"
    with Daemon(handlers) as d:
        # getWebhookInfo after registering gives Telegram's pending count
        from harness import eventually
        assert eventually(lambda: "tgwebhookd_telegram_pending_updates " in
                          scrape(d.admin_port))
        status = d.deliver(message("/start", 1))[0]
        assert status == 200
        check_against(scrape(d.admin_port))
