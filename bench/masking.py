"""Masking engine throughput and accuracy against Presidio's own AnalyzerEngine, in one run.

    .venv/bin/python bench/masking.py                      # 100,000 rows, Presidio on 5,000
    .venv/bin/python bench/masking.py --rows 20000 --sample 2000 --entities EMAIL_ADDRESS,US_SSN
    .venv/bin/python bench/masking.py --json bench/results/masking.json

No database, no network. It generates a PII table deterministically (--seed): id, name, email,
phone, card_number (Luhn-valid), iban (valid checksum), ip, ssn, notes (free text, sometimes with
PII in it) and order_ref (a 16-digit int that fails Luhn), then

1. masks every row with `governance.masking.Masker.mask_rows` (one spec: --entities, --threshold,
   redact), cold, as the gateway would; and again with the per-value cache off;
2. runs Presidio's AnalyzerEngine over the cells of the first --sample rows: a registry holding
   only the same predefined pattern recognizers, Presidio's NoOpNlpEngine (no spaCy model is
   installed), the same entities and threshold, and the column name as `context`, which is what
   the Masker passes. A fresh Masker masks the same rows, the two taking turns on 250-row blocks
   so that other load on the machine affects both alike: that ratio is the speed-up. Presidio's
   time for all rows is extrapolated from the sample (printed so);
3. compares, on the sample, every finding (row, column, start, end, entity, score) of Presidio with
   the Masker's analysis of the same cell without the preceding-words context (which needs tokens
   that the NoOp engine does not produce; see governance/masking.py), per entity type.

Counts are findings before overlapping findings are merged; "masked" counts are what mask_rows
reported (after merging), for all rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from governance import masking  # noqa: E402
from governance.masking import recognizers as masking_recognizers  # noqa: E402

COLUMNS = ["id", "name", "email", "phone", "card_number", "iban", "ip", "ssn", "notes", "order_ref"]
CHECKED = ("CREDIT_CARD", "IBAN_CODE", "US_SSN", "EMAIL_ADDRESS")

FIRST = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert Sybil Trent Victor Walter Yara Zoe Liam Noah Emma Ava Mia Lucas Ethan Amir Sofia Chen Priya Kenji Ines Omar Lena Marco Nadia Tomas Freya".split()
LAST = "Smith Johnson Williams Brown Jones Garcia Miller Davis Martinez Lopez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Clark Lewis Robinson Walker Young Allen King Wright Scott Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera".split()
DOMAINS = [
    "example.com",
    "mail.example.org",
    "corp.io",
    "acme-inc.com",
    "post.de",
    "uni.ac.uk",
    "gmail.com",
    "fastmail.fm",
]
US_AREAS = ["212", "415", "312", "617", "202", "305", "512", "646", "718", "206", "303", "404", "617", "713"]


def _digits(rnd: random.Random, n: int) -> str:
    return "".join(str(rnd.randrange(10)) for _ in range(n))


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card_number(rnd: random.Random) -> str:
    body = rnd.choice(["4", "51", "52", "53", "54", "55"])
    body += _digits(rnd, 15 - len(body))
    number = body + _luhn_digit(body)
    style = rnd.random()
    if style < 0.6:
        return number
    sep = " " if style < 0.8 else "-"
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def order_ref(rnd: random.Random) -> int:
    body = str(rnd.randrange(1, 10)) + _digits(rnd, 14)
    good = int(_luhn_digit(body))
    return int(body + str((good + rnd.randrange(1, 10)) % 10))  # never the Luhn digit


def iban(rnd: random.Random) -> str:
    country, bban = rnd.choice(
        [
            ("DE", lambda: _digits(rnd, 18)),
            ("GB", lambda: rnd.choice(["NWBK", "BARC", "MIDL"]) + _digits(rnd, 14)),
            ("FR", lambda: _digits(rnd, 23)),
            ("NL", lambda: rnd.choice(["ABNA", "INGB", "RABO"]) + _digits(rnd, 10)),
        ]
    )
    bban = bban()
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    code = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rnd.random() < 0.3:
        return " ".join(code[i : i + 4] for i in range(0, len(code), 4))
    return code


def phone(rnd: random.Random) -> str:
    area, exchange, line = rnd.choice(US_AREAS), str(rnd.randrange(200, 1000)), _digits(rnd, 4)
    style = rnd.randrange(6)
    if style == 0:
        return f"+1 {area}-{exchange}-{line}"
    if style == 1:
        return f"({area}) {exchange}-{line}"
    if style == 2:
        return f"{area}.{exchange}.{line}"
    if style == 3:
        return f"+44 20 79{_digits(rnd, 2)} {_digits(rnd, 4)}"
    if style == 4:
        return f"+49 30 {_digits(rnd, 8)}"
    return f"+33 1 {_digits(rnd, 2)} {_digits(rnd, 2)} {_digits(rnd, 2)} {_digits(rnd, 2)}"


def ip(rnd: random.Random) -> str:
    if rnd.random() < 0.8:
        first = rnd.choice(["10", "192", "172", str(rnd.randrange(1, 224))])
        return ".".join([first] + [str(rnd.randrange(256)) for _ in range(3)])
    return (
        "2001:db8:"
        + ":".join(f"{rnd.randrange(0x10000):x}" for _ in range(3))
        + "::"
        + f"{rnd.randrange(0x10000):x}"
    )


def ssn(rnd: random.Random) -> str:
    area = rnd.randrange(1, 900)
    area = 667 if area == 666 else area
    return f"{area:03d}-{rnd.randrange(1, 100):02d}-{rnd.randrange(1, 10000):04d}"


def notes(rnd: random.Random, row: dict) -> str:
    choice = rnd.random()
    if choice < 0.35:
        return rnd.choice(
            [
                "No issues.",
                "Delivered to the front desk.",
                "Customer satisfied with the service.",
                "Left a voicemail, waiting for an answer.",
                "Upgraded the client to version 4.2.1 last week.",
            ]
        )
    templates = [
        "Asked to update the contact email to {email}.",
        "Refund issued to card {card} after the dispute.",
        "Please phone back on {phone} after 5pm.",
        "Call back on {phone} tomorrow.",
        "Login from {ip} looked suspicious, blocked for an hour.",
        "Order {order} shipped on 2024-03-05, tracking sent.",
        "SSN on file: {ssn}; identity verified by {name}.",
        "Wire transfer from {iban} received, reference {order}.",
        "Server 10.1.2.3 runs agent version 10.1.2.3, all green.",
        "Escalated by {name}; see ticket 4471 and https://support.example.com/t/4471.",
    ]
    return rnd.choice(templates).format(
        email=row["email"],
        card=row["card_number"],
        phone=row["phone"],
        ip=row["ip"],
        order=row["order_ref"],
        ssn=row["ssn"],
        name=row["name"],
        iban=row["iban"],
    )


def generate(n: int, seed: int) -> list[list]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        row = {
            "id": i + 1,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{rnd.randrange(100)}@{rnd.choice(DOMAINS)}",
            "phone": phone(rnd),
            "card_number": card_number(rnd),
            "iban": iban(rnd),
            "ip": ip(rnd),
            "ssn": ssn(rnd),
            "order_ref": order_ref(rnd),
        }
        row["notes"] = notes(rnd, row) if rnd.random() < 0.9 else None
        rows.append([row[c] for c in COLUMNS])
    return rows


def cell_text(value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return value if isinstance(value, str) else str(value)


def table_bytes(rows: list[list]) -> int:
    return sum(len(t.encode()) for row in rows for v in row if (t := cell_text(v)) is not None)


def presidio_engine(entities: list[str]):
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, predefined_recognizers
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    recognizers = [
        getattr(predefined_recognizers, masking_recognizers._RECOGNIZER_CLASSES[e])() for e in entities
    ]
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=RecognizerRegistry(recognizers=recognizers), nlp_engine=nlp)


LINEAGE_QUERIES = [
    "select id, email from customers where id = {n}",
    "select reverse(email) as r, name from customers where id > {n}",
    "with c as (select id, upper(iban) as i from customers) select i, id from c where id < {n}",
    "select c.name, o.total from customers c join orders o on o.customer_id = c.id where o.total > {n}",
    "select string_agg(substr(ssn, g, 1), '') from customers, generate_series(1, {n}) g",
    "select name from customers union all select email from customers where id = {n}",
    "select (select max(c2.email) from customers c2 where c2.id = c.id) as m from customers c limit {n}",
    "select * from customers where id = {n}",
]


def bench_lineage(rounds: int = 40) -> dict:
    """The lineage step of masking: per query, qualify against the schema and walk the scopes
    (governance/masking_lineage.derived_plans with a cached schema), as the pipeline runs it."""
    from governance import masking_lineage

    schema = {"public": {f"t{i}": {f"c{j}": "text" for j in range(12)} for i in range(40)}}
    schema["public"]["customers"] = {c: "text" for c in ("id", "name", "email", "iban", "ssn", "phone")}
    schema["public"]["orders"] = {"id": "int", "customer_id": "int", "total": "numeric"}
    masker = masking.Masker(
        [{"columns": ["(?i)^(email|ssn)$"], "column_types": {"(?i)^iban$": "IBAN_CODE"}}], key=b"bench"
    )
    texts = [q.replace("{n}", str(n)) for n in range(rounds) for q in LINEAGE_QUERIES]
    times = []
    for text in texts:
        t0 = time.perf_counter()
        masking_lineage.derived_plans(masker, text, "postgres", key="bench", loader=lambda: schema, width=2)
        times.append(time.perf_counter() - t0)
    times.sort()
    import sqlglot

    parse_times = []
    for text in texts:  # for scale: parsing the same query alone, on the same (loaded) machine
        t0 = time.perf_counter()
        sqlglot.parse(text, read="postgres")
        parse_times.append(time.perf_counter() - t0)
    parse_times.sort()
    return {
        "parse_mean_us": statistics.fmean(parse_times[len(parse_times) // 20 :]) * 1e6,
        "queries": len(texts),
        "tables": len(schema["public"]),
        "mean_us": statistics.fmean(times[len(times) // 20 :]) * 1e6,
        "p95_us": times[int(0.95 * len(times))] * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--sample", type=int, default=5_000, help="rows Presidio analyses (min 5000 unless --rows is smaller)"
    )
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--entities", default=",".join(masking.SUPPORTED_ENTITIES))
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    entities = [e.strip() for e in args.entities.split(",") if e.strip()]
    sample = min(args.sample, args.rows)
    logging.disable(logging.WARNING)  # Presidio warns per call about its NoOp engine

    t0 = time.perf_counter()
    rows = generate(args.rows, args.seed)
    size = table_bytes(rows)
    print(
        f"table: {args.rows:,} rows x {len(COLUMNS)} columns, {size / 1e6:.1f} MB of cell text "
        f"(generated in {time.perf_counter() - t0:.1f}s, seed {args.seed})"
    )
    print(f"entities: {', '.join(entities)}; threshold {args.threshold}")
    spec = masking.validate_spec({"entities": entities, "score_threshold": args.threshold})
    key = b"bench-key-0123456789abcdef012345"

    # Warm the process-wide parts first (Presidio import, recognizers, the tldextract snapshot,
    # regexes compiled on first use); Presidio gets the same warm-up below. What is learnt about
    # values is forgotten before each measured run.
    masking.Masker([spec], key=key).mask_rows(COLUMNS, rows[:500])
    masking_recognizers._clear_process_caches()

    masker = masking.Masker([spec], key=key)
    t = time.perf_counter()
    masked_rows, masked_counts = masker.mask_rows(COLUMNS, rows)
    ours_s = time.perf_counter() - t

    masking_recognizers._clear_process_caches()
    nocache = masking.Masker([spec], key=key)
    nocache._cache_entries = 0
    t = time.perf_counter()
    nocache.mask_rows(COLUMNS, rows)
    ours_nocache_s = time.perf_counter() - t

    # Presidio and the Masker on the same sample rows, alternating 250-row blocks so that both
    # see the same machine (other load on it shifts both alike), then our analysis of each cell.
    engine = presidio_engine([e for e in entities if e in masking_recognizers._RECOGNIZER_CLASSES])
    cells = [
        (i, j, text, COLUMNS[j])
        for i, row in enumerate(rows[:sample])
        for j, value in enumerate(row)
        if (text := cell_text(value))
    ]
    for _, _, text, column in cells[:5000]:  # the same warm-up (500 rows): Presidio compiles on first use
        engine.analyze(
            text, language="en", entities=entities, score_threshold=args.threshold, context=[column]
        )
    masking_recognizers._clear_process_caches()
    sample_masker = masking.Masker([spec], key=key)
    presidio_found: set[tuple] = set()
    presidio_s = ours_sample_s = 0.0
    block = 250
    for first in range(0, sample, block):
        t = time.perf_counter()
        sample_masker.mask_rows(COLUMNS, rows[first : first + block])
        ours_sample_s += time.perf_counter() - t
        block_cells = [c for c in cells if first <= c[0] < first + block]
        t = time.perf_counter()
        for i, j, text, column in block_cells:
            for r in engine.analyze(
                text, language="en", entities=entities, score_threshold=args.threshold, context=[column]
            ):
                presidio_found.add((i, j, r.start, r.end, r.entity_type, r.score))
        presidio_s += time.perf_counter() - t

    ours_found: set[tuple] = set()
    for i, j, text, column in cells:
        for start, end, score, entity in sample_masker._analyze(text, column.lower(), window=False):
            ours_found.add((i, j, start, end, entity, score))

    presidio_by = Counter(f[4] for f in presidio_found)
    ours_by = Counter(f[4] for f in ours_found)
    all_entities = sorted(set(presidio_by) | set(ours_by) | set(masked_counts))
    agree = {
        e: {f for f in presidio_found if f[4] == e} == {f for f in ours_found if f[4] == e}
        for e in all_entities
    }

    sample_size = table_bytes(rows[:sample])
    presidio_full_s = presidio_s * args.rows / sample
    print()
    print(f"{'engine':44} {'seconds':>9} {'MB/s':>8} {'rows/s':>10}")

    def line(name, seconds, nbytes, nrows):
        print(f"{name:44} {seconds:9.2f} {nbytes / 1e6 / seconds:8.2f} {nrows / seconds:10,.0f}")

    line(f"Masker.mask_rows, {args.rows:,} rows", ours_s, size, args.rows)
    line(f"Masker.mask_rows, {args.rows:,} rows, no cache", ours_nocache_s, size, args.rows)
    line(f"Masker.mask_rows, first {sample:,} rows (interleaved)", ours_sample_s, sample_size, sample)
    line(f"Presidio AnalyzerEngine, first {sample:,} rows (interleaved)", presidio_s, sample_size, sample)
    extrapolated = "measured" if sample == args.rows else f"extrapolated from {sample:,} rows"
    line(f"Presidio, {args.rows:,} rows ({extrapolated})", presidio_full_s, size, args.rows)
    print()
    print(
        f"speed-up on the same {sample:,} rows, timed block by block: {presidio_s / ours_sample_s:.1f}x; "
        f"full table vs extrapolated Presidio: {presidio_full_s / ours_s:.1f}x "
        f"({presidio_full_s / ours_nocache_s:.1f}x without the cache)"
    )
    print()
    print(
        f"findings on the first {sample:,} rows (before merging overlaps), and what mask_rows masked on all rows:"
    )
    print(f"{'entity':20} {'presidio':>9} {'masker':>9} {'agree':>6} {'masked':>9}")
    for e in all_entities:
        print(
            f"{e:20} {presidio_by.get(e, 0):9,} {ours_by.get(e, 0):9,} {'yes' if agree[e] else 'NO':>6} "
            f"{masked_counts.get(e, 0):9,}"
        )
    checked = {e: agree.get(e, True) for e in CHECKED if e in entities}
    print()
    print(
        "same findings (span, entity, score) as Presidio on "
        + ", ".join(f"{e}: {'yes' if ok else 'NO'}" for e, ok in checked.items())
        + f"; on every entity: {'yes' if all(agree.values()) else 'NO'}"
    )
    diff = sorted(presidio_found ^ ours_found)[:5]
    for f in diff:
        side = "presidio only" if f in presidio_found else "masker only"
        i, j = f[0], f[1]
        print(f"  {side}: row {i} {COLUMNS[j]} {f[2]}:{f[3]} {f[4]} {f[5]} in {cell_text(rows[i][j])!r}")
    example = next(r for r in masked_rows if r[8])
    print()
    print("a masked row:", example)
    lineage_cost = bench_lineage()
    print()
    print(
        f"lineage step (issue 14; {lineage_cost['queries']} queries over a {lineage_cost['tables']}-table schema, "
        f"cached schema): mean {lineage_cost['mean_us']:.0f} us, p95 {lineage_cost['p95_us']:.0f} us per query "
        f"(sqlglot parsing the same queries alone: {lineage_cost['parse_mean_us']:.0f} us)"
    )

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": args.rows,
                    "sample": sample,
                    "seed": args.seed,
                    "entities": entities,
                    "threshold": args.threshold,
                    "table_mb": size / 1e6,
                    "masker_s": ours_s,
                    "masker_nocache_s": ours_nocache_s,
                    "masker_sample_s": ours_sample_s,
                    "presidio_sample_s": presidio_s,
                    "presidio_full_s_extrapolated": presidio_full_s,
                    "presidio_findings": dict(presidio_by),
                    "masker_findings": dict(ours_by),
                    "masked": masked_counts,
                    "agree": agree,
                    "python": platform.python_version(),
                    "cpu_count": os.cpu_count(),
                },
                indent=2,
            )
        )
    return 0 if all(checked.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
