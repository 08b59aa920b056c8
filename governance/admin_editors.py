"""Structured editors for rule specs in the admin: form widgets that read a stored spec into
checkboxes, lists and selects, and write the same JSON back.

They only translate between the page and the spec's JSON: they never validate. The form still
posts one JSON value per spec field, and the rules services (`guardrails.validate_conditions`,
`masking.validate_spec`) are the one place that says what is wrong, exactly as for MCP and REST.
Each widget keeps the raw JSON in an "Advanced" box: ticking "edit as JSON" posts the textarea
instead of the fields. A post without the editor's marker (a script, an older form) is raw JSON
too, so the raw path stays the contract.
"""

from __future__ import annotations

import json

from django import forms

from governance import guardrails, masking

# Shown next to each entity in the masking editor (what Presidio's recognizer finds).
ENTITY_DESCRIPTIONS = {
    "CREDIT_CARD": "Payment card numbers (Luhn-checked)",
    "CRYPTO": "Bitcoin wallet addresses",
    "DATE_TIME": "Dates and times",
    "EMAIL_ADDRESS": "E-mail addresses",
    "IBAN_CODE": "International bank account numbers (checksum-checked)",
    "IP_ADDRESS": "IPv4 and IPv6 addresses",
    "MAC_ADDRESS": "Network card (MAC) addresses",
    "MEDICAL_LICENSE": "US medical licence (DEA) numbers",
    "PHONE_NUMBER": "Phone numbers (libphonenumber; 0.4 without a nearby 'phone' word)",
    "UK_NHS": "UK NHS numbers",
    "URL": "Web addresses",
    "US_BANK_NUMBER": "US bank account numbers",
    "US_DRIVER_LICENSE": "US driver licence numbers",
    "US_ITIN": "US individual taxpayer numbers",
    "US_PASSPORT": "US passport numbers",
    "US_SSN": "US social security numbers",
    "UUID": "UUIDs",
    "PERSON": "Names of people (needs a spaCy model)",
    "LOCATION": "Places (needs a spaCy model)",
    "NRP": "Nationalities, religious or political groups (needs a spaCy model)",
    "ORGANIZATION": "Organizations (needs a spaCy model)",
}

METHOD_DESCRIPTIONS = {
    "redact": "Replace with the entity name: <EMAIL_ADDRESS>",
    "pseudonym": "Replace with a stable pseudonym: <EMAIL_ADDRESS:8c1f2a9b0d> (joins still work)",
    "partial": "Star all but the last characters: ****-****-****-4242",
}

BLANK_CUSTOM_ROWS = 2


def _lines(data, key: str) -> list[str]:
    return [line.strip() for line in (data.get(key) or "").splitlines() if line.strip()]


def _number(raw: str, kind=float):
    """A number from a text box, or the text itself (the service then names the field)."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        return raw


def _loaded(value) -> tuple[dict, str, bool]:
    """(spec as a dict, its raw text, whether the raw text is not a JSON object)."""
    if isinstance(value, dict):
        return value, json.dumps(value, indent=2), False
    text = value if isinstance(value, str) else ""
    if not text.strip():
        return {}, "{}", False
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}, text, True
    if not isinstance(parsed, dict):
        return {}, text, True
    return parsed, json.dumps(parsed, indent=2), False


class StructuredJSONWidget(forms.Widget):
    """Base: a structured editor plus the raw JSON (advanced). Subclasses turn the spec into
    template values (`editor_context`) and the posted fields back into a spec (`build`)."""

    known_keys: tuple[str, ...] = ()  # the spec keys the fields show; others ride along unchanged

    def editor_context(self, spec: dict) -> dict:
        raise NotImplementedError

    def build(self, data, name: str) -> dict:
        raise NotImplementedError

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        spec, raw, broken = _loaded(value)
        spec = spec if isinstance(spec, dict) else {}
        # Keys this editor has no field for (a newer spec field) are kept as they are, so saving
        # the form never drops part of a rule.
        extra = self.extra_of(spec)
        context["widget"].update(
            raw=raw,
            raw_mode=broken,  # JSON the fields cannot show opens in the raw box
            editor=self.editor_context(spec),
            extra=json.dumps(extra) if extra else "",
        )
        return context

    def value_from_datadict(self, data, files, name):
        if data.get(f"{name}__editor") != "structured" or data.get(f"{name}__mode") == "raw":
            return data.get(name)
        built = self.build(data, name)
        try:
            extra = json.loads(data.get(f"{name}__extra") or "{}")
        except ValueError:
            extra = {}
        if isinstance(extra, dict) and extra:
            built = self.merge_extra(built, extra)
        return json.dumps(built)

    def extra_of(self, spec: dict) -> dict:
        return {k: v for k, v in spec.items() if self.known_keys and k not in self.known_keys}

    def merge_extra(self, built: dict, extra: dict) -> dict:
        return {**{k: v for k, v in extra.items() if k not in self.known_keys}, **built}

    def value_omitted_from_data(self, data, files, name):
        return name not in data and f"{name}__editor" not in data


class GuardrailConditionsWidget(StructuredJSONWidget):
    """Input or output conditions of a guardrail (see `governance.guardrails`)."""

    template_name = "admin/widgets/guardrail_conditions.html"
    known_keys = ("sql", "deny_words", "regex", "risk_at_least", "secrets")
    known_sql = (
        "deny_statements",
        "require_where",
        "single_statement",
        "read_only",
        "deny_tables",
        "deny_schemas",
        "deny_functions",
        "allow_side_effects",
        "max_affected_rows",
    )

    def extra_of(self, spec: dict) -> dict:
        extra = super().extra_of(spec)
        sql = spec.get("sql")
        if isinstance(sql, dict) and (unknown := {k: v for k, v in sql.items() if k not in self.known_sql}):
            extra["sql"] = unknown
        return extra

    def merge_extra(self, built: dict, extra: dict) -> dict:
        unknown_sql = extra.get("sql") if isinstance(extra.get("sql"), dict) else {}
        out = super().merge_extra(built, extra)
        if unknown_sql:
            known = out.get("sql") or {}
            out["sql"] = {**{k: v for k, v in unknown_sql.items() if k not in self.known_sql}, **known}
        return out

    def __init__(self, direction: str, attrs=None):
        super().__init__(attrs)
        self.direction = direction

    def editor_context(self, spec: dict) -> dict:
        sql = spec.get("sql") if isinstance(spec.get("sql"), dict) else {}

        def joined(value):
            return "\n".join(str(v) for v in value) if isinstance(value, list) else ""

        return {
            "direction": self.direction,
            "statement_kinds": [
                (kind, kind in (sql.get("deny_statements") or [])) for kind in guardrails.STATEMENT_KINDS
            ],
            "require_where": bool(sql.get("require_where")),
            "single_statement": bool(sql.get("single_statement")),
            "read_only": bool(sql.get("read_only")),
            "deny_tables": joined(sql.get("deny_tables")),
            "deny_schemas": joined(sql.get("deny_schemas")),
            "deny_functions": joined(sql.get("deny_functions")),
            "side_effects": [
                (effect, effect in (sql.get("allow_side_effects") or []))
                for effect in guardrails.SIDE_EFFECTS
            ],
            "max_affected_rows": "" if sql.get("max_affected_rows") is None else sql.get("max_affected_rows"),
            "deny_words": joined(spec.get("deny_words")),
            "regex": joined(spec.get("regex")),
            "risk_levels": [(level, level == spec.get("risk_at_least")) for level in guardrails.RISK_LEVELS],
            "secrets": bool(spec.get("secrets")),
        }

    def build(self, data, name: str) -> dict:
        out: dict = {}
        if self.direction == "input":
            sql: dict = {}
            kinds = data.getlist(f"{name}__deny_statements") if hasattr(data, "getlist") else []
            if kinds:
                sql["deny_statements"] = kinds
            for flag in ("require_where", "single_statement", "read_only"):
                if data.get(f"{name}__{flag}"):
                    sql[flag] = True
            for key in ("deny_tables", "deny_schemas", "deny_functions"):
                if items := _lines(data, f"{name}__{key}"):
                    sql[key] = items
            effects = data.getlist(f"{name}__allow_side_effects") if hasattr(data, "getlist") else []
            if effects:
                sql["allow_side_effects"] = effects
            ceiling = _number(data.get(f"{name}__max_affected_rows"), int)
            if ceiling is not None:
                sql["max_affected_rows"] = ceiling
            if sql:
                out["sql"] = sql
            if level := data.get(f"{name}__risk_at_least"):
                out["risk_at_least"] = level
        for key in ("deny_words", "regex"):
            if items := _lines(data, f"{name}__{key}"):
                out[key] = items
        if self.direction == "output" and data.get(f"{name}__secrets"):
            out["secrets"] = True
        return out


class MaskingSpecWidget(StructuredJSONWidget):
    """A masking rule's spec (see `governance.masking.validate_spec`)."""

    template_name = "admin/widgets/masking_spec.html"
    known_keys = (
        "entities",
        "custom",
        "columns",
        "column_types",
        "score_threshold",
        "method",
        "keep_last",
        "best_effort",
    )

    def editor_context(self, spec: dict) -> dict:
        chosen = spec.get("entities") or []
        custom = [c for c in (spec.get("custom") or []) if isinstance(c, dict)]
        rows = []
        for item in custom:
            is_deny = item.get("deny_list") is not None
            pattern = "\n".join(item.get("deny_list") or []) if is_deny else item.get("regex", "")
            rows.append(
                {
                    "name": item.get("name", ""),
                    "deny": is_deny,
                    "pattern": pattern,
                    "score": item.get("score", ""),
                }
            )
        rows += [{"name": "", "deny": False, "pattern": "", "score": ""}] * BLANK_CUSTOM_ROWS
        method = spec.get("method") or "redact"
        return {
            "entities": [
                (name, ENTITY_DESCRIPTIONS.get(name, ""), name in chosen, name in masking.NER_ENTITIES)
                for name in (*masking.SUPPORTED_ENTITIES, *masking.NER_ENTITIES)
            ],
            "methods": [(m, METHOD_DESCRIPTIONS[m], m == method) for m in masking.METHODS],
            "keep_last": spec.get("keep_last", masking.DEFAULT_KEEP_LAST),
            "score_threshold": spec.get("score_threshold", masking.DEFAULT_THRESHOLD),
            "columns": "\n".join(spec.get("columns") or []),
            "column_types": "\n".join(
                f"{entity} {pattern}" for pattern, entity in (spec.get("column_types") or {}).items()
            ),
            "best_effort": bool(spec.get("best_effort")),
            "custom": [{"index": i, **row} for i, row in enumerate(rows)],
            "custom_total": len(rows),
        }

    def build(self, data, name: str) -> dict:
        out: dict = {}
        entities = data.getlist(f"{name}__entities") if hasattr(data, "getlist") else []
        if entities:
            out["entities"] = entities
        out["method"] = data.get(f"{name}__method") or "redact"
        if out["method"] == "partial":
            keep_last = _number(data.get(f"{name}__keep_last"), int)
            if keep_last is not None:
                out["keep_last"] = keep_last
        threshold = _number(data.get(f"{name}__score_threshold"))
        if threshold is not None:
            out["score_threshold"] = threshold
        if columns := _lines(data, f"{name}__columns"):
            out["columns"] = columns
        typed = {}
        for line in _lines(data, f"{name}__column_types"):  # "ENTITY pattern"
            entity, _, pattern = line.partition(" ")
            typed[pattern.strip() or entity] = entity if pattern.strip() else ""
        if typed:
            out["column_types"] = typed
        if data.get(f"{name}__best_effort"):
            out["best_effort"] = True
        custom = []
        total = _number(data.get(f"{name}__custom_total"), int)
        for i in range(total if isinstance(total, int) and 0 <= total <= 60 else 0):
            prefix = f"{name}__custom-{i}-"
            row_name = (data.get(prefix + "name") or "").strip()
            pattern = data.get(prefix + "pattern") or ""
            if not row_name and not pattern.strip():
                continue  # a blank row
            item: dict = {"name": row_name}
            if data.get(prefix + "type") == "deny_list":
                item["deny_list"] = _lines(data, prefix + "pattern")
            else:
                item["regex"] = pattern.strip()
            score = _number(data.get(prefix + "score"))
            if score is not None:
                item["score"] = score
            custom.append(item)
        if custom:
            out["custom"] = custom
        return out


class StructuredJSONField(forms.JSONField):
    """A JSON form field shown by a structured widget. Blank is allowed here: the service decides
    whether an empty spec is acceptable (and says so in its own words)."""

    def __init__(self, *, widget, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(widget=widget, **kwargs)

    def prepare_value(self, value):
        return value if isinstance(value, str) else json.dumps(value or {})
