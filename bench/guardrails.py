"""How fast is the guardrail engine? Pure CPU, no database, no Django: only governance.guardrails.

    .venv/bin/python bench/guardrails.py                 # ~4 s per dialect, three dialects
    .venv/bin/python bench/guardrails.py --seconds 10 --dialect postgres

For each dialect it builds a mixed corpus of several hundred distinct inputs (benign reads and
writes with a real WHERE, plus malicious ones: DDL, batches, nested writes, comment and case
tricks, denied tables and functions, dynamic SQL) from templates with varied names and values,
and a 10-rule set exercising every input condition. It then calls
`evaluate_input(rules, text, dialect=...)` in a loop over the corpus for --seconds and prints
evaluations per second and latency percentiles. Every call parses from scratch: the engine keeps
compiled regexes and globs across calls, never parsed statements. It also checks the verdicts
(benign must pass, malicious must be blocked) and times `evaluate_output` with secret detection
on rendered result texts. Single process, single thread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from governance.guardrails import Rule, evaluate_input, evaluate_output, validate_conditions  # noqa: E402


def _rule(name: str, input: dict | None = None, output: dict | None = None) -> Rule:
    return Rule(
        name,
        validate_conditions(input or {}, direction="input"),
        validate_conditions(output or {}, direction="output"),
    )


RULES = [
    _rule("read-only", {"sql": {"read_only": True}}),
    _rule("where", {"sql": {"require_where": True}}),
    _rule("no-ddl", {"sql": {"deny_statements": ["drop", "truncate", "alter", "create", "grant", "revoke"]}}),
    _rule("single", {"sql": {"single_statement": True}}),
    _rule(
        "pii-tables",
        {"sql": {"deny_tables": ["billing.invoices", "public.users", "secret_*"], "deny_schemas": ["hr"]}},
    ),
    _rule("functions", {"sql": {"deny_functions": ["dblink*", "lo_*", "dangerous_*"]}}),
    _rule("words", {"deny_words": ["drop database", "shutdown", "xp_cmdshell"]}),
    _rule("regex", {"regex": [r"(?i)into\s+(out|dump)file", r"\b\d{3}-\d{2}-\d{4}\b"]}),
    _rule("dynamic", {"sql": {"deny_statements": ["do", "call", "copy", "execute", "prepare"]}}),
    _rule(
        "output",
        {"deny_words": ["ignore previous instructions"]},
        {"secrets": True, "deny_words": ["confidential"]},
    ),
]
# Benign reads must pass all ten; benign writes (with a real WHERE) are checked against these only.
WRITE_RULES = [
    r for r in RULES if r.name in ("where", "no-ddl", "single", "pii-tables", "functions", "words", "regex")
]

TABLES = ["orders", "customers", "items", "events", "sales.daily", "shop.products", "logs", "payments"]
COLUMNS = ["id", "name", "total", "status", "created_at", "deleted_at", "updated_by", "country"]

BENIGN_READS = {
    "all": [
        "SELECT * FROM {t} WHERE {c} = {n}",
        "select {c}, count(*) from {t} group by {c} having count(*) > {n}",
        "SELECT a.{c}, b.{c2} FROM {t} a JOIN {t2} b ON b.id = a.id WHERE a.{c} > {n} ORDER BY 1 LIMIT 50",
        "SELECT * FROM {t} WHERE id IN (SELECT id FROM {t2} WHERE {c2} = '{w}')",
        "WITH recent AS (SELECT * FROM {t} WHERE id > {n}) SELECT count(*) FROM recent",
        "SELECT id, row_number() OVER (PARTITION BY {c} ORDER BY {c2}) FROM {t}",
        "SELECT '{w} DROP TABLE {t}; DELETE FROM x' AS note, {c} FROM {t}",
        "SELECT * FROM {t} -- DROP TABLE {t2}\n WHERE {c} <> {n}",
        "SELECT /* delete later */ {c} FROM {t} WHERE {c2} LIKE '%{w}%'",
        "SELECT {c} FROM {t} UNION ALL SELECT {c2} FROM {t2}",
        "SELECT CASE WHEN {c} > {n} THEN 'big' ELSE 'small' END FROM {t}",
        "WITH secret_view AS (SELECT {c} FROM {t}) SELECT * FROM secret_view",
    ],
    "postgres": [
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY {c}) FROM {t}",
        "EXPLAIN SELECT * FROM {t} WHERE {c} = {n}",
        "SELECT $${w}; DROP TABLE {t}$$ AS s, now()",
        "SELECT count(*) FILTER (WHERE {c} > {n}) FROM {t}",
        "SHOW search_path",
    ],
    "mysql": [
        "SELECT * FROM `{t}` WHERE `{c}` = '{w}\\'s'",
        "SHOW COLUMNS FROM {t}",
        "EXPLAIN SELECT * FROM {t} WHERE {c} = {n}",
        "SELECT DATE_FORMAT({c}, '%Y-%m') FROM {t} # monthly",
    ],
    "sqlite": [
        "SELECT [{c}] FROM [{t}] WHERE {c2} = '{w}''s'",
        "PRAGMA table_info({t})",
        "SELECT * FROM pragma_table_info('{t}')",
        "EXPLAIN QUERY PLAN SELECT * FROM {t}",
    ],
}
BENIGN_WRITES = [
    "UPDATE {t} SET {c} = {n} WHERE id = {n2}",
    "DELETE FROM {t} WHERE {c} = '{w}' AND id > {n}",
    "INSERT INTO {t} ({c}, {c2}) VALUES ({n}, '{w}')",
]
MALICIOUS = {
    "all": [
        "DROP TABLE {t}",
        "DrOp/**/TABLE {t}",
        "SELECT * FROM {t}; -- \n DROP TABLE {t2}",
        "DELETE FROM {t}",
        "UPDATE {t} SET {c} = {n} WHERE 1=1",
        "DELETE FROM {t} WHERE id = {n} OR 'a'='a'",
        "SELECT * FROM billing.invoices WHERE id = {n}",
        "SELECT * FROM {t} WHERE id IN (SELECT id FROM hr.salaries)",
        "WITH x AS (SELECT * FROM secret_keys) SELECT * FROM x",
        "SELECT dangerous_fn({n}) FROM {t}",
        "SELECT 1; SELECT 2",
        "ＤＲＯＰ TABLE {t}",
        "SELECT * FROM {t} WHERE ssn = '123-45-{n4}'",
        "SELECT * FROM {t}; shutdown",
        "BEGIN; DELETE FROM {t} WHERE id = {n}; COMMIT",
        "INSERT INTO {t} SELECT * FROM {t2}",
    ],
    "postgres": [
        "WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM {t} WHERE id = {n}",
        "DO $$ BEGIN EXECUTE 'DROP TABLE ' || '{t}'; END $$",
        "DO $$ DECLARE q text := '{w}'; BEGIN EXECUTE q; END $$",
        "SELECT pg_read_file('/etc/passwd')",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT * INTO {w}_copy FROM {t}",
        "PREPARE p{n} AS DELETE FROM {t}",
        'SELECT * FROM "public"."Users"',
        "SELECT dblink_exec('dbname=x', 'DROP TABLE {t}')",
        "SET search_path TO hr; SELECT * FROM salaries",
    ],
    "mysql": [
        "SELECT 1 /*!50000 ; DROP TABLE {t} */",
        "PREPARE s FROM 'DROP TABLE {t}'",
        "SELECT * FROM `billing`.`invoices`",
        "DELETE FROM {t} WHERE id={n}--1 OR 1=1",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SELECT * FROM {t} INTO OUTFILE '/tmp/{w}'",
        "LOCK TABLES {t} WRITE",
    ],
    "sqlite": [
        "ATTACH DATABASE '/tmp/{w}.db' AS x",
        "SELECT load_extension('/tmp/{w}.so')",
        "PRAGMA writable_schema = 1",
        "SELECT * FROM [billing].[invoices]",
        "REPLACE INTO {t} VALUES ({n})",
    ],
}

OUTPUTS = [
    "id | name | total\n" + "\n".join(f"{i} | customer {i} | {i * 3.5}" for i in range(40)),
    "key | value\naws | AKIAQWERTYUIOPASDFGH\nnote | rotate me",
    "config\npassword=hunter22\nurl=postgres://app:s3cretpw@db:5432/app",
    "id | token\n1 | ghp_" + "a1B2c3D4e5" * 4 + "\n2 | none",
    "name | notes\nbob | confidential: do not share",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA...\n-----END RSA PRIVATE KEY-----",
    "plain text result with nothing special in it, repeated. " * 40,
]


def corpus(dialect: str, rng: random.Random, variants: int) -> list[tuple[str, str]]:
    """(label, text) pairs: label is read, write or bad."""
    out: list[tuple[str, str]] = []
    groups = [
        ("read", BENIGN_READS["all"] + BENIGN_READS[dialect]),
        ("write", BENIGN_WRITES),
        ("bad", MALICIOUS["all"] + MALICIOUS[dialect]),
    ]
    for label, templates in groups:
        for template in templates:
            for _ in range(variants):
                t, t2 = rng.sample(TABLES, 2)
                c, c2 = rng.sample(COLUMNS, 2)
                values = {
                    "t": t,
                    "t2": t2,
                    "c": c,
                    "c2": c2,
                    "n": rng.randint(1, 99999),
                    "n2": rng.randint(1, 999),
                    "n4": f"{rng.randint(0, 9999):04d}",
                    "w": rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) + str(rng.randint(1, 99)),
                }
                if dialect == "sqlite" or "[{t}]" in template or "`{t}`" in template:
                    values["t"], values["t2"] = t.split(".")[-1], t2.split(".")[-1]
                out.append((label, template.format(**values)))
    return list(dict.fromkeys(out))


def run(dialect: str, seconds: float, variants: int) -> dict:
    rng = random.Random(f"portcullis-{dialect}")
    items = corpus(dialect, rng, variants)
    wrong = []
    for label, text in items:  # warm-up and verdict check
        rules = WRITE_RULES if label == "write" else RULES
        blocked = bool(evaluate_input(rules, text, dialect=dialect))
        if blocked != (label == "bad"):
            wrong.append((label, text))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for label, text in items:
            rules = WRITE_RULES if label == "write" else RULES
            t0 = time.perf_counter()
            evaluate_input(rules, text, dialect=dialect)
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6  # noqa: E731
    return {
        "dialect": dialect,
        "inputs": len(items),
        "benign": sum(1 for label, _ in items if label != "bad"),
        "malicious": sum(1 for label, _ in items if label == "bad"),
        "evaluations": len(latencies),
        "per_second": len(latencies) / elapsed,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "p50_us": pct(0.50),
        "p95_us": pct(0.95),
        "p99_us": pct(0.99),
        "wrong": wrong,
    }


def run_output(seconds: float) -> dict:
    count = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for text in OUTPUTS:
            evaluate_output(RULES, text)
            count += 1
    return {"evaluations": count, "per_second": count / (time.perf_counter() - start)}


# Issue 14: what the new checks cost. The same strict rule with and without the new conditions
# (side effects are denied under any SQL rule; a ceiling refuses kinds outside one transaction),
# over the mixed corpus and over inputs that exercise exact string decoding, effect judgement
# (MERGE, upserts, REPLACE, stored bodies) and side-effect classification.
ISSUE14_STRICT = {"deny_statements": ["drop", "truncate", "alter"], "require_where": True}
ISSUE14_INPUTS = {
    "postgres": [
        r"DO E'BEGIN \x44ELETE FROM items WHERE id = {n}; END'",
        r"DO U&'BEGIN !0044ELETE FROM items; END' UESCAPE '!'",
        "MERGE INTO items t USING (VALUES ({n}, 'x')) s(id, name) ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name",
        "MERGE INTO items t USING items s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "INSERT INTO items (id, name) VALUES ({n}, 'a') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "INSERT INTO items (id, name) SELECT id, name FROM items ON CONFLICT (id) DO UPDATE SET price = 0",
        "CREATE RULE r{n} AS ON INSERT TO side DO ALSO DELETE FROM items",
        "COPY items TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/passwd'), {n}",
        "UPDATE items SET price = {n} FROM other o WHERE o.id = items.id AND items.id = {n}",
    ],
    "mysql": [
        "PREPARE s FROM 'DEL' 'ETE FROM items WHERE id = {n}'; EXECUTE s",
        "REPLACE INTO items (id, name) VALUES ({n}, 'x')",
        "REPLACE INTO items SELECT * FROM items",
        "INSERT INTO items (id) VALUES ({n}) ON DUPLICATE KEY UPDATE price = 0",
        "CREATE OR REPLACE TABLE items (id INT)",
        "CREATE TRIGGER t{n} AFTER INSERT ON side FOR EACH ROW DELETE FROM items",
        "SET GLOBAL max_connections = {n}",
    ],
    "sqlite": [
        "INSERT INTO items (id) VALUES ({n}) ON CONFLICT (id) DO UPDATE SET price = 0",
        "SELECT readfile('/etc/passwd'), {n}",
        "ATTACH DATABASE '/tmp/x{n}.db' AS x",
    ],
}


def run_issue14(dialect: str, seconds: float) -> dict:
    base = [_rule("strict", {"sql": ISSUE14_STRICT})]
    extended = [
        _rule(
            "strict", {"sql": {**ISSUE14_STRICT, "allow_side_effects": ["network"], "max_affected_rows": 100}}
        )
    ]
    mixed = [text for _, text in corpus(dialect, random.Random(f"portcullis-{dialect}"), 3)]
    new = [t.replace("{n}", str(i)) for i in range(20) for t in ISSUE14_INPUTS[dialect]]

    def rate(rules, texts) -> float:
        for text in texts:
            evaluate_input(rules, text, dialect=dialect)
        count, deadline = 0, time.perf_counter() + seconds / 7
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for text in texts:
                evaluate_input(rules, text, dialect=dialect)
                count += 1
        return (time.perf_counter() - start) / count * 1e6

    # Alternate the two rule sets and keep each one's best run: the machine is shared and noisy.
    base_us, extended_us = [], []
    for _ in range(3):
        base_us.append(rate(base, mixed))
        extended_us.append(rate(extended, mixed))
    return {
        "mixed_base_us": min(base_us),
        "mixed_extended_us": min(extended_us),
        "issue14_us": rate(extended, new),
        "issue14_inputs": len(ISSUE14_INPUTS[dialect]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per dialect (default 4)")
    parser.add_argument("--dialect", choices=["postgres", "mysql", "sqlite"], action="append")
    parser.add_argument("--variants", type=int, default=10, help="variations per template (default 10)")
    args = parser.parse_args()
    dialects = args.dialect or ["postgres", "mysql", "sqlite"]

    print(f"guardrail engine: {len(RULES)} rules, evaluate_input per dialect, {args.seconds:g} s each")
    print(
        f"{'dialect':<9} {'inputs':>6} {'benign':>6} {'malic.':>6} {'evals/s':>9} {'mean us':>8} {'p50 us':>7} {'p95 us':>7} {'p99 us':>7}"
    )
    failures = 0
    for dialect in dialects:
        r = run(dialect, args.seconds, args.variants)
        print(
            f"{r['dialect']:<9} {r['inputs']:>6} {r['benign']:>6} {r['malicious']:>6} {r['per_second']:>9.0f} "
            f"{r['mean_us']:>8.0f} {r['p50_us']:>7.0f} {r['p95_us']:>7.0f} {r['p99_us']:>7.0f}"
        )
        for label, text in r["wrong"][:10]:
            print(f"   WRONG VERDICT ({'allowed' if label == 'bad' else 'blocked'} {label}): {text!r}")
        failures += len(r["wrong"])
    print("issue 14 checks (one strict rule; + allow_side_effects and max_affected_rows; us per evaluation):")
    for dialect in dialects:
        r = run_issue14(dialect, min(args.seconds, 3.0))
        print(
            f"  {dialect:<9} mixed corpus {r['mixed_base_us']:.0f} -> {r['mixed_extended_us']:.0f} us "
            f"(+{r['mixed_extended_us'] - r['mixed_base_us']:.0f}); "
            f"{r['issue14_inputs']} decoding/effect/side-effect inputs: {r['issue14_us']:.0f} us"
        )
    out = run_output(min(args.seconds, 2.0))
    print(f"evaluate_output (secrets, words; {len(OUTPUTS)} result texts): {out['per_second']:.0f} evals/s")
    if failures:
        print(f"{failures} inputs got the wrong verdict")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
