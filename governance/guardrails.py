"""Guardrail evaluation engine: pure functions over rule conditions and text, no models, no database.

A rule has input conditions (checked before a statement or command runs) and output conditions
(checked on the rendered result). `validate_conditions` checks and normalizes what an admin
wrote; `evaluate_input` / `evaluate_output` return findings; `requires_read_only` tells the
pipeline to also run the statement in a read-only transaction (defence in depth).

What is checked
---------------
Input, any connection:
  * ``deny_words``: whole words or phrases, case-insensitive, matched after NFKC normalization,
    removal of invisible characters (zero-width spaces and joiners, soft hyphens, BOM,
    bidi controls, variation selectors, tag characters), a small map of Cyrillic and Greek
    lookalikes of Latin letters, and casefolding. ``drop`` matches ``DROP table``, ``drop;``,
    ``ＤＲＯＰ``, ``dr\\u200bop`` and ``DRОP`` with a Cyrillic O; it does not match ``dropbox``
    or ``backdrop``. Phrases match across any whitespace and across ``/* */`` comments. For
    command connections a third view with shell quotes and backslashes removed is also
    searched (``r''m`` and ``r\\m`` are ``rm``).
  * ``regex``: Python ``re`` patterns, searched in the raw text and in the normalized text
    (NFKC, invisibles removed, lookalikes mapped, case kept: add ``(?i)`` for
    case-insensitivity).

Input, SQL connections (``dialect`` given; every rule with ``sql`` conditions):
  * The text is parsed with sqlglot in the connection's dialect and EVERY statement of the
    batch is checked, including statements nested anywhere: data-modifying CTEs, statements
    between BEGIN/COMMIT, the statement after EXPLAIN (with or without ANALYZE), CREATE TABLE
    AS, SELECT ... INTO, PREPARE ... AS, MySQL ``PREPARE s FROM '<literal>'`` (also through a
    ``SET @v = '<literal>'`` earlier in the same batch), the bodies of PostgreSQL ``DO`` blocks
    and ``CREATE FUNCTION/PROCEDURE`` (LANGUAGE plpgsql or sql: statements, PERFORM, and string
    literals passed to EXECUTE), and the SQL strings given to functions that run SQL text
    (``query_to_xml``, ``dblink``/``dblink_exec``, ``ts_stat``, SQLite ``eval``). Functions that
    read a table or schema named in a string (``table_to_xml('billing.invoices', ...)``,
    ``schema_to_xml``, SQLite ``pragma_table_info('t')``) count as references to it.
  * Fail closed: if the input does not parse, or parses differently from how the server would
    split it, every rule with SQL conditions reports ``sql.parse_error``. Before trusting
    sqlglot, an independent dialect-faithful lexer (strings, escapes, dollar quotes, nested
    comments, MySQL ``#`` and ``-- `` comments) checks that sqlglot saw every code word and
    every statement separator the server would see; MySQL executable comments ``/*! ... */``
    and ``/*M! ... */`` are treated as code (even when the server's version would skip them).
    Input with NUL characters, longer than ``MAX_SQL_CHARS`` (256 Ki characters; analysis costs
    5-10 microseconds per character, so up to ~3 s of CPU at the cap) or with more than
    ``MAX_STATEMENTS`` (2000) statements is not analyzed: parse error.
  * Dynamic SQL that cannot be resolved (EXECUTE of a non-literal, ``EXECUTE p`` of a statement
    prepared outside this input, a DO body that does not parse, another procedural language,
    ``query_to_xml`` of a non-literal, ``database_to_xml``) is ``sql.opaque``, reported to rules
    with deny_statements, read_only, deny_tables, deny_schemas, deny_functions or require_where
    (require_where too: hidden SQL may be an unrestricted DELETE).
  * Statement kinds (``deny_statements``) are the vocabulary in ``STATEMENT_KINDS``. Each
    statement reports every kind found in it, nested ones included: ``INSERT ... SELECT`` is
    insert and select, ``SELECT ... INTO t`` is select and create, an upsert is insert and
    update, REPLACE is insert and delete, ``EXPLAIN DELETE`` is explain and delete. Anything
    sqlglot only understands as a generic command is classified by its leading keyword, and
    unknown ones are ``other``.
  * ``require_where``: UPDATE/DELETE without WHERE, or whose WHERE is always true after
    sqlglot's simplifier folds constants (``1=1``, ``true``, ``'a'='a'``, ``1``, ``NOT FALSE``,
    ``... OR 1=1``), refers to no column at all (``WHERE random() < 2``, ``WHERE $1``), compares
    an expression with itself (``x = x``, ``t.id = id``), holds a condition and its negation
    (``x IS NULL OR x IS NOT NULL``, ``a = 1 OR a <> 1``), or is ``LIKE '%'``. TRUNCATE is also
    reported, since it removes every row.
  * ``read_only``: only SELECT (without INTO, FOR UPDATE/SHARE or a locking clause), EXPLAIN of
    a read, SHOW/DESCRIBE, USE, MySQL user-variable SET, and read-only SQLite PRAGMAs pass.
    Writes, DDL, DCL, COPY in any direction (decision: through this gateway's connector COPY
    gives nothing a SELECT does not, and ``TO PROGRAM``/``FROM`` reach the server, so all of it
    is refused), CALL, DO, EXECUTE, PREPARE, SET of settings, LOCK, VACUUM/ANALYZE/REINDEX/
    CLUSTER/REFRESH, ATTACH, transaction control (COMMIT/ROLLBACK/BEGIN would end or escape
    the read-only transaction the pipeline wraps the statement in) and calls of the functions
    in ``READ_ONLY_DENIED_FUNCTIONS`` (side effects, server files, sleeps and locks, SQL run
    from a string) are findings.
  * ``deny_tables``/``deny_schemas``: case-insensitive globs over every table reference
    (``schema.table`` and bare ``table``). CTE names are not tables, with proper WITH scoping
    (a later CTE is not visible to an earlier one unless RECURSIVE), PostgreSQL quoted-name case
    rules, and never for the table an INSERT/UPDATE/DELETE/MERGE writes (servers do not resolve
    that to a CTE). Unqualified names are also tried in the default schema: ``public`` (and
    ``pg_catalog`` for ``pg_*`` names) on PostgreSQL plus every schema a ``SET search_path`` or
    ``set_config('search_path', ...)`` earlier in the batch named; ``main`` on SQLite; on MySQL
    the database of a ``USE`` earlier in the batch. Schema-level statements (CREATE/DROP SCHEMA,
    GRANT ON SCHEMA, USE) count as references to the schema.
  * ``deny_functions``: extra function (and procedure, for CALL) names or globs, matched on
    the bare and the schema-qualified name, both as sqlglot resolves them and as written
    (sqlglot maps some built-ins to other names, e.g. IFNULL to COALESCE; any ``name(`` in the
    text that the tree does not use as a table, alias or column is treated as a call). A
    schema-qualified call also counts as a reference to its schema for ``deny_schemas``.

  * String literals are decoded exactly as the server decodes them (``governance/sql_strings``)
    before SQL inside them is re-parsed; sqlglot's own decoding is never trusted for that: a
    literal of its tree is mapped back to the lexer's token at the same offset.
  * Effects: MERGE actions, upserts, REPLACE and ``UPDATE ... FROM``/``DELETE ... USING`` are
    judged under ``require_where`` (see ``merge_check``/``upsert_check``); ``CREATE OR REPLACE
    TABLE`` is also a drop; CREATE FUNCTION/PROCEDURE/TRIGGER/RULE/EVENT is ``stored_code`` and
    the bodies of rules, MySQL triggers and events are checked as if they ran now.
  * ``allow_side_effects``: server-side side effects (``SIDE_EFFECTS``) are findings
    (``sql.side_effects``) under every rule with SQL conditions unless the rule names the class.
  * ``max_affected_rows``: enforced by the connector (a transaction rolled back when it changed
    more rows); here, statement kinds outside ``CEILING_KINDS`` are findings under it.

Output: ``deny_words``, ``regex`` as above, and ``secrets``: AWS access key ids, private key PEM
blocks, GitHub, Slack, Stripe live and Google API tokens, JWTs, passwords in URLs and
``password=``/``secret:``/``api_key=`` assignments with a real-looking value (placeholders
such as ``****``, ``${VAR}``, ``%s``, ``<redacted>``, ``null`` and AWS's documented example
key are ignored). Details name the kind and line of a secret, never its value.

Findings name what in the input or output triggered them (a statement kind, a table, a
function, a parse error, a denied word as it appears in the normalized text, the line of a
regex match); they never contain a rule's regex, glob or word list.

Known limits (honest)
---------------------
  * Views, triggers, rules, user-defined functions and procedures can read or write tables the
    query does not name; the engine only sees the text. ``read_only`` relies on the pipeline's
    read-only transaction for those (``requires_read_only``).
  * MySQL unqualified tables are matched only bare (the connection's default database is not
    known to this module); PostgreSQL assumes the default ``search_path`` unless the batch sets
    it. Renaming tables or schemas via aliases, synonyms or ``search_path`` set outside the input
    is not seen.
  * MySQL analysis assumes the default SQL mode: backslash escapes in strings and ``"`` for
    strings. With ``NO_BACKSLASH_ESCAPES`` or ``ANSI_QUOTES`` on the server the lexer differs.
    PostgreSQL assumes ``standard_conforming_strings = on`` (the default since 9.1).
  * Statements sqlglot 30 cannot parse are blocked whenever a rule has SQL conditions, even
    when harmless: e.g. PostgreSQL ``START TRANSACTION READ WRITE``, ``SECURITY LABEL``, ``IMPORT
    FOREIGN SCHEMA``, ``DELETE ... WHERE CURRENT OF``, ``U&"..."`` identifiers, ``ROWS FROM``;
    MySQL ``LOAD DATA``, ``HANDLER``, ``XA``, ``SELECT ... INTO OUTFILE`` and ``... FROM t INTO
    @var``; NBSP or other non-ASCII whitespace between keywords (the servers do not treat it as
    whitespace either). Generic commands (VACUUM, LOCK, CREATE TRIGGER, LISTEN, ...) are
    classified by keyword and scanned token by token for names, which can over-report tables.
  * Transaction control is a finding under ``read_only`` even in a harmless
    ``BEGIN; SELECT ...; COMMIT``, and so is PREPARE of a SELECT.
  * ``EXECUTE p`` of a statement prepared by an earlier request of the same session is opaque.
  * Secrets in tabular results are found by value shape (keys, tokens, PEM, JWT, URLs with a
    password) or by ``name=value``/``name: value`` text; a plain ``password`` column holding
    ``hunter2`` in a rendered table is not recognized.
  * sqlglot 30 does not parse SQLite ``?1`` numbered parameters or an unterminated trailing
    ``/*`` comment (both valid in SQLite): parse error.
  * ``EXPLAIN <write>`` counts as the write even without ANALYZE (conservative).
  * ``require_where`` does not prove tautologies in general: ``id > 0 OR id <= 0`` is caught,
    ``id >= 0 OR id < 5`` is not; an uncorrelated ``WHERE EXISTS (SELECT ... WHERE u.x = 1)``
    passes. A multi-table MySQL DELETE restricted only by its JOIN is reported, and so is a
    WHERE on constants only (``WHERE now() > '2000-01-01'``), true or not.
  * Deny words are text matching: they also match inside string literals and comments (by
    design), and the lookalike map is small, not Unicode's full confusables table. Shell
    evasions other than quotes and backslashes (variables, globbing, ``$'\\x72m'``) are not
    decoded.
  * The regex guard rejects patterns over 1000 characters, nested unbounded quantifiers such as
    ``(a+)+`` and patterns that match the empty string; other super-linear patterns (e.g.
    overlapping alternatives inside a repeat, ``(a|a)*``) are not detected.
  * This module logs nothing; it filters sqlglot's "falling back to parsing as a Command"
    warning, which it handles itself.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.optimizer.simplify import simplify
from sqlglot.tokens import TokenType

from gateway.kinds import SQL_DIALECTS
from governance import sql_strings
from governance.errors import InvalidInput

try:  # Python 3.11+
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parser  # type: ignore[no-redef]

__all__ = [
    "DIALECTS",
    "STATEMENT_KINDS",
    "SQL_CONDITIONS",
    "READ_ONLY_DENIED_FUNCTIONS",
    "Rule",
    "Finding",
    "validate_conditions",
    "evaluate_input",
    "evaluate_output",
    "requires_read_only",
    "affected_rows_ceiling",
    "databases_named",
    "SIDE_EFFECTS",
    "find_secrets",
]

DIALECTS = SQL_DIALECTS  # connection kind -> sqlglot dialect (the kind records, gateway/kinds.py)

STATEMENT_KINDS = (
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "create",
    "drop",
    "alter",
    "truncate",
    "grant",
    "revoke",
    "copy",
    "call",
    "do",
    "execute",
    "prepare",
    "set",
    "vacuum",
    "analyze",
    "lock",
    "attach",
    "pragma",
    "load",
    "comment",
    "refresh",
    "reindex",
    "cluster",
    "transaction",
    "explain",
    "show",
    "use",
    "stored_code",
    "other",
)

# Server-side side effects: refused under every rule with SQL conditions unless the rule names the
# class in `allow_side_effects` (default deny: an admin who denies DROP did not mean to allow a
# shell command on the database host either).
SIDE_EFFECTS = ("program", "file", "large_object", "server_config", "server_control", "network")
# Statement kinds that can run under `max_affected_rows` (the pipeline runs them in one
# transaction it rolls back when too many rows changed; anything that commits, ends the
# transaction or cannot run inside one is refused).
CEILING_KINDS = frozenset({"select", "insert", "update", "delete", "merge", "explain", "show"})
MAX_AFFECTED_ROWS_LIMIT = 10**12

INPUT_CONDITIONS = ("sql", "deny_words", "regex", "risk_at_least")
# Pre-execution analysis: block input the built-in analyzer rates at least this risky.
RISK_LEVELS = ("low", "medium", "high", "critical")
OUTPUT_CONDITIONS = ("deny_words", "regex", "secrets")
SQL_CONDITIONS = (
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
_SQL_BOOLS = ("require_where", "single_statement", "read_only")
_SQL_LISTS = ("deny_statements", "deny_tables", "deny_schemas", "deny_functions")
# Conditions an unresolvable piece of dynamic SQL could defeat.
_OPAQUE_SENSITIVE = (
    "deny_statements",
    "read_only",
    "deny_tables",
    "deny_schemas",
    "deny_functions",
    "require_where",
    "max_affected_rows",
)

MAX_REGEX_CHARS = 1000
MAX_LIST_ITEMS = 500
MAX_ITEM_CHARS = 200
MAX_SQL_CHARS = 256 * 1024  # larger inputs are not parsed (fail closed); 5-10 us/char to analyze
MAX_STATEMENTS = 2000  # larger batches are not analyzed (fail closed)
_MAX_NESTING = 4  # SQL inside a string inside SQL ... deeper than this is opaque

# Kinds that do not change anything; every other kind is a finding under read_only.
_READ_KINDS = frozenset({"select", "explain", "show", "use"})

# Side-effecting or server-reaching functions refused under read_only (globs, lower case).
READ_ONLY_DENIED_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "postgres": (
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_ls_*dir",
        "pg_stat_file",
        "pg_reload_conf",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_signal_backend",
        "set_config",
        "lo_*",
        "loread",
        "lowrite",
        "nextval",
        "setval",
        "dblink*",
        "pg_*advisory*",
        "pg_switch_wal",
        "pg_switch_xlog",
        "pg_create_restore_point",
        "pg_file_*",
        "pg_logdir_ls",
        "pg_promote",
        "pg_rotate_logfile",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_*replication_slot*",
        "pg_replication_origin_*",
        "pg_logical_emit_message",
        "pg_logical_slot_*",
        "pg_wal_replay_*",
        "pg_stat_reset*",
        "pg_stat_statements_reset",
        "pg_log_backend_memory_contexts",
        "pg_import_system_collations",
        "pg_truncate_visibility_map",
        "pg_notify",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "query_to_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "txid_current",
        "pg_current_xact_id",
        "binary_upgrade_*",
        "pg_execute_server_program",
    ),
    "mysql": (
        "load_file",
        "sleep",
        "benchmark",
        "get_lock",
        "release_lock",
        "release_all_locks",
        "sys_exec",
        "sys_eval",
        "sys_get",
        "sys_set",
        "master_pos_wait",
        "source_pos_wait",
        "wait_for_executed_gtid_set",
        "wait_until_sql_thread_after_gtids",
    ),
    "sqlite": (
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
        "fsdir",
        "zipfile",
        "eval",
    ),
}

# Functions with server-side side effects, by class (globs, lower case).
SIDE_EFFECT_FUNCTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgres": (
        ("lo_import", "file"),
        ("lo_export", "file"),
        ("lo_*", "large_object"),
        ("loread", "large_object"),
        ("lowrite", "large_object"),
        ("pg_read_file", "file"),
        ("pg_read_binary_file", "file"),
        ("pg_ls_dir", "file"),
        ("pg_ls_*dir", "file"),
        ("pg_stat_file", "file"),
        ("pg_file_*", "file"),
        ("pg_logdir_ls", "file"),
        ("pg_reload_conf", "server_config"),
        ("pg_rotate_logfile", "server_config"),
        ("pg_terminate_backend", "server_control"),
        ("pg_cancel_backend", "server_control"),
        ("pg_signal_backend", "server_control"),
        ("pg_promote", "server_control"),
        ("pg_switch_wal", "server_control"),
        ("pg_switch_xlog", "server_control"),
        ("pg_create_restore_point", "server_control"),
        ("pg_start_backup", "server_control"),
        ("pg_stop_backup", "server_control"),
        ("pg_backup_start", "server_control"),
        ("pg_backup_stop", "server_control"),
        ("pg_*replication_slot*", "server_control"),
        ("pg_replication_origin_*", "server_control"),
        ("pg_logical_emit_message", "server_control"),
        ("pg_wal_replay_*", "server_control"),
        ("pg_stat_reset*", "server_control"),
        ("pg_stat_statements_reset", "server_control"),
        ("binary_upgrade_*", "server_control"),
        ("dblink*", "network"),
    ),
    "mysql": (
        ("sys_exec", "program"),
        ("sys_eval", "program"),
        ("load_file", "file"),
    ),
    "sqlite": (
        ("load_extension", "program"),
        ("readfile", "file"),
        ("writefile", "file"),
        ("fsdir", "file"),
        ("zipfile", "file"),
        ("edit", "program"),
    ),
}

# Functions whose string argument is itself SQL: name -> which argument (by argument count), or None.
_SQL_TEXT_FUNCTIONS: dict[str, dict[str, object]] = {
    "postgres": {
        "query_to_xml": lambda n: 0,
        "query_to_xml_and_xmlschema": lambda n: 0,
        "query_to_xmlschema": lambda n: 0,
        "dblink": lambda n: 1 if n >= 2 else 0,
        "dblink_exec": lambda n: 1 if n >= 2 else 0,
        "dblink_send_query": lambda n: 1,
        "dblink_open": lambda n: 2 if n >= 3 else 1,
        "ts_stat": lambda n: 0,
        "ts_rewrite": lambda n: 1 if n == 2 else None,
    },
    "mysql": {},
    "sqlite": {"eval": lambda n: 0},
}
# Functions that read a table (or a schema, or everything) named by a string argument.
_TABLE_NAME_FUNCTIONS: dict[str, dict[str, str]] = {
    "postgres": {
        "table_to_xml": "table",
        "table_to_xmlschema": "table",
        "table_to_xml_and_xmlschema": "table",
        "schema_to_xml": "schema",
        "schema_to_xmlschema": "schema",
        "schema_to_xml_and_xmlschema": "schema",
        "database_to_xml": "all",
        "database_to_xmlschema": "all",
        "database_to_xml_and_xmlschema": "all",
    },
    "mysql": {},
    "sqlite": {
        "pragma_table_info": "table",
        "pragma_table_xinfo": "table",
        "pragma_index_list": "table",
        "pragma_foreign_key_list": "table",
    },
}
# Words followed by "(" that are syntax or type names, not function calls.
_NOT_CALLS = frozenset(
    """in exists values any all some array row over filter within as on using into table from join where and
    or not select with recursive materialized lateral insert update set returning conflict key primary unique
    check references foreign index by partition group order having limit case when then else end is null like
    ilike between distinct union except intersect rows range groups window to do nothing default generated
    stored collate escape similar overlaps of out inout variadic for share fetch first next only tablesample
    repeatable ordinality match against use force ignore cube rollup grouping sets create view function
    procedure trigger returns language char character varchar varying nchar nvarchar numeric decimal dec float
    double real bit varbit timestamp time interval datetime binary varbinary int integer bigint smallint
    tinyint mediumint enum text json jsonb geometry point polygon year""".split()
)
_DEFAULT_SCHEMAS = {"postgres": ("public",), "sqlite": ("main",), "mysql": ()}

# SQLite PRAGMAs that only read: with a table/index argument, or without any value.
_PRAGMA_READ_WITH_ARG = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
_PRAGMA_READ_NO_VALUE = frozenset(
    {
        "database_list",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "page_count",
        "page_size",
        "user_version",
        "schema_version",
        "application_id",
        "encoding",
        "journal_mode",
        "freelist_count",
        "data_version",
        "foreign_keys",
        "max_page_count",
        "auto_vacuum",
        "cache_size",
        "synchronous",
        "busy_timeout",
    }
)
_PRAGMA_TABLE_ARG = frozenset(
    {"table_info", "table_xinfo", "index_list", "foreign_key_list", "foreign_key_check"}
)

# Leading keyword -> kind, for statements sqlglot only knows as a generic command.
_KEYWORD_KIND = {
    "select": "select",
    "values": "select",
    "table": "select",
    "with": "select",
    "insert": "insert",
    "replace": "insert",
    "upsert": "insert",
    "update": "update",
    "delete": "delete",
    "merge": "merge",
    "create": "create",
    "drop": "drop",
    "alter": "alter",
    "rename": "alter",
    "truncate": "truncate",
    "grant": "grant",
    "revoke": "revoke",
    "copy": "copy",
    "call": "call",
    "do": "do",
    "execute": "execute",
    "exec": "execute",
    "prepare": "prepare",
    "deallocate": "prepare",
    "set": "set",
    "reset": "set",
    "vacuum": "vacuum",
    "analyze": "analyze",
    "analyse": "analyze",
    "lock": "lock",
    "unlock": "lock",
    "attach": "attach",
    "detach": "attach",
    "pragma": "pragma",
    "load": "load",
    "comment": "comment",
    "refresh": "refresh",
    "reindex": "reindex",
    "cluster": "cluster",
    "begin": "transaction",
    "start": "transaction",
    "commit": "transaction",
    "end": "transaction",
    "rollback": "transaction",
    "abort": "transaction",
    "savepoint": "transaction",
    "release": "transaction",
    "xa": "transaction",
    "explain": "explain",
    "describe": "explain",
    "desc": "explain",
    "show": "show",
    "use": "use",
}
# Keywords that, seen anywhere in a generic command, mean a nested statement of that kind.
_NESTED_KEYWORDS = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "drop",
        "truncate",
        "alter",
        "create",
        "grant",
        "revoke",
        "copy",
        "call",
    }
)

_CLASS_KIND: dict[type, str] = {
    exp.Select: "select",
    exp.Union: "select",
    exp.Intersect: "select",
    exp.Except: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "merge",
    exp.Create: "create",
    exp.Drop: "drop",
    exp.Alter: "alter",
    exp.TruncateTable: "truncate",
    exp.Grant: "grant",
    exp.Revoke: "revoke",
    exp.Copy: "copy",
    exp.Set: "set",
    exp.Use: "use",
    exp.Show: "show",
    exp.Describe: "explain",
    exp.Analyze: "analyze",
    exp.Pragma: "pragma",
    exp.Attach: "attach",
    exp.Detach: "attach",
    exp.Transaction: "transaction",
    exp.Commit: "transaction",
    exp.Rollback: "transaction",
    exp.Comment: "comment",
    exp.LoadData: "load",
    exp.Kill: "other",
    exp.Refresh: "refresh",
    exp.Cache: "other",
    exp.Uncache: "other",
    exp.Install: "other",
    exp.Execute: "execute",
    exp.ExecuteSql: "execute",
    exp.Declare: "other",
    exp.Export: "other",
    exp.Undrop: "create",
    exp.LockingStatement: "lock",
    exp.EndStatement: "transaction",
}
for _name in ("Summarize", "Put", "Get", "SwapTable"):
    if hasattr(exp, _name):
        _CLASS_KIND.setdefault(getattr(exp, _name), "other")
_QUERY_CLASSES = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery, exp.Paren)
_STRING_NODES = (exp.Literal, exp.ByteString, exp.RawString, exp.Heredoc, exp.National, exp.UnicodeString)


class _DropCommandFallbackWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in str(record.msg)


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    input: dict  # normalized input conditions ({} if none)
    output: dict  # normalized output conditions ({} if none)


@dataclass(frozen=True)
class Finding:
    rule: str
    direction: str  # "input" | "output"
    condition: str  # e.g. "sql.deny_statements", "deny_words", "secrets"
    statement: int | None  # 1-based index of the statement in the batch, when it applies
    detail: str  # what in the input/output triggered it; never the rule's pattern

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "direction": self.direction,
            "condition": self.condition,
            "statement": self.statement,
            "detail": self.detail,
        }


# ---------------------------------------------------------------------------------------------
# Text normalization (deny_words, regex)
# ---------------------------------------------------------------------------------------------

_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF9, 0xFFFB),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
)
_INVISIBLE = {cp: None for lo, hi in _INVISIBLE_RANGES for cp in range(lo, hi + 1)}

# Visual lookalikes of Latin letters, case kept (applied after NFKC, before casefolding).
_LOOKALIKES = {
    # Cyrillic capitals
    "А": "A",
    "В": "B",
    "Е": "E",
    "Ё": "E",
    "Ѕ": "S",
    "І": "I",
    "Ї": "I",
    "Ј": "J",
    "К": "K",
    "М": "M",
    "Н": "H",
    "О": "O",
    "Р": "P",
    "С": "C",
    "Т": "T",
    "У": "Y",
    "Х": "X",
    "Ү": "Y",
    "Һ": "H",
    "Ӏ": "I",
    "Ԛ": "Q",
    "Ԝ": "W",
    # Cyrillic small
    "а": "a",
    "е": "e",
    "ё": "e",
    "ѕ": "s",
    "і": "i",
    "ї": "i",
    "ј": "j",
    "к": "k",
    "м": "m",
    "о": "o",
    "р": "p",
    "с": "c",
    "у": "y",
    "х": "x",
    "ү": "y",
    "һ": "h",
    "ӏ": "l",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ɡ": "g",
    "ı": "i",
    "ȷ": "j",
    # Greek capitals
    "Α": "A",
    "Β": "B",
    "Ε": "E",
    "Ζ": "Z",
    "Η": "H",
    "Ι": "I",
    "Κ": "K",
    "Μ": "M",
    "Ν": "N",
    "Ο": "O",
    "Ρ": "P",
    "Τ": "T",
    "Υ": "Y",
    "Χ": "X",
    "Ϲ": "C",
    "Ϳ": "J",
    # Greek small
    "α": "a",
    "ε": "e",
    "ι": "i",
    "κ": "k",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "υ": "u",
    "χ": "x",
    "γ": "y",
    "ω": "w",
    "ϲ": "c",
    "ϳ": "j",
    # Armenian
    "օ": "o",
    "ս": "u",
}
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKES)


def _normalize_keep_case(text: str) -> str:
    """NFKC, invisible characters removed, lookalikes mapped to Latin; case kept."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE).translate(_LOOKALIKE_TABLE)


def _normalize(text: str) -> str:
    """What deny words are matched against: `_normalize_keep_case` and casefolded."""
    if text.isascii():
        return text.lower()
    return _normalize_keep_case(text).casefold()


def _strip_block_comments(text: str) -> str:
    """Replace /* ... */ with a space, in linear time (a lazy regex is quadratic on unclosed /*)."""
    out, pos = [], 0
    while True:
        start = text.find("/*", pos)
        if start < 0:
            break
        end = text.find("*/", start + 2)
        if end < 0:
            break
        out.append(text[pos:start])
        out.append(" ")
        pos = end + 2
    out.append(text[pos:])
    return "".join(out)


_SHELL_QUOTES = str.maketrans({"'": None, '"': None, "\\": None})


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_conditions(conditions: dict, *, direction: str) -> dict:
    """Validate and normalize one rule's conditions for direction "input" or "output".

    Raises InvalidInput with a specific message. Returns the normalized dict: every condition of
    the direction present with its default filled in (sql sub-conditions too), kinds lower-cased,
    lists deduplicated in their first-seen order. A rule with no effective condition in this
    direction (nothing given, or only empty lists and false) normalizes to ``{}``.
    """
    if direction not in ("input", "output"):
        raise InvalidInput(f"direction must be 'input' or 'output', not {direction!r}")
    if conditions is None:
        return {}
    if not isinstance(conditions, dict):
        raise InvalidInput(f"{direction} conditions must be an object, not {_type_name(conditions)}")
    allowed = INPUT_CONDITIONS if direction == "input" else OUTPUT_CONDITIONS
    other = OUTPUT_CONDITIONS if direction == "input" else INPUT_CONDITIONS
    for key in conditions:
        if key not in allowed:
            if isinstance(key, str) and key in other:
                raise InvalidInput(
                    f"condition '{key}' applies to {'output' if direction == 'input' else 'input'} only; "
                    f"{direction} conditions are: {', '.join(allowed)}"
                )
            raise InvalidInput(f"unknown condition {_show(key)}; use one of: {', '.join(allowed)}")

    out: dict = {}
    if direction == "input":
        out["sql"] = _validate_sql(conditions.get("sql"))
    out["deny_words"] = _validate_words(conditions.get("deny_words"), "deny_words")
    out["regex"] = _validate_regexes(conditions.get("regex"), "regex")
    if direction == "input" and conditions.get("risk_at_least") is not None:
        level = conditions["risk_at_least"]
        if level not in RISK_LEVELS:
            raise InvalidInput(f"risk_at_least must be one of: {', '.join(RISK_LEVELS)}")
        out["risk_at_least"] = level
    if direction == "output":
        out["secrets"] = _validate_bool(conditions.get("secrets", False), "secrets")

    effective = any(
        (any(v for v in value.values()) if isinstance(value, dict) else bool(value)) for value in out.values()
    )
    return out if effective else {}


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _show(value) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


def _validate_bool(value, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} must be true or false, not {_type_name(value)}")
    return value


def _validate_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list of strings, not {_type_name(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise InvalidInput(f"{where} has {len(value)} entries; at most {MAX_LIST_ITEMS} are allowed")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"{where}[{i}] must be a string, not {_type_name(item)}")
        if not item.strip():
            raise InvalidInput(f"{where}[{i}] is empty")
    return value


def _dedup(items) -> list:
    return list(dict.fromkeys(items))


def _validate_sql(value) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput(f"sql must be an object with any of: {', '.join(SQL_CONDITIONS)}")
    for key in value:
        if key not in SQL_CONDITIONS:
            raise InvalidInput(f"unknown sql condition {_show(key)}; use one of: {', '.join(SQL_CONDITIONS)}")
    out: dict = {}
    kinds = []
    for kind in _validate_list(value.get("deny_statements"), "sql.deny_statements"):
        norm = kind.strip().lower()
        if norm not in STATEMENT_KINDS:
            raise InvalidInput(
                f"sql.deny_statements: unknown statement kind {_show(kind)}; use one of: {', '.join(STATEMENT_KINDS)}"
            )
        kinds.append(norm)
    out["deny_statements"] = _dedup(kinds)
    for key in _SQL_BOOLS:
        out[key] = _validate_bool(value.get(key, False), f"sql.{key}")
    out["deny_tables"] = _validate_globs(value.get("deny_tables"), "sql.deny_tables", max_parts=3)
    out["deny_schemas"] = _validate_globs(value.get("deny_schemas"), "sql.deny_schemas", max_parts=1)
    out["deny_functions"] = _validate_globs(value.get("deny_functions"), "sql.deny_functions", max_parts=2)
    allowed = []
    for item in _validate_list(value.get("allow_side_effects"), "sql.allow_side_effects"):
        norm = item.strip().lower()
        if norm not in SIDE_EFFECTS:
            raise InvalidInput(
                f"sql.allow_side_effects: unknown class {_show(item)}; use any of: {', '.join(SIDE_EFFECTS)}"
            )
        allowed.append(norm)
    out["allow_side_effects"] = _dedup(allowed)
    ceiling = value.get("max_affected_rows")
    if ceiling is not None and (
        not isinstance(ceiling, int)
        or isinstance(ceiling, bool)
        or not 0 <= ceiling <= MAX_AFFECTED_ROWS_LIMIT
    ):
        raise InvalidInput(
            f"sql.max_affected_rows must be a whole number from 0 to {MAX_AFFECTED_ROWS_LIMIT}, or null"
        )
    out["max_affected_rows"] = ceiling
    return {key: out[key] for key in SQL_CONDITIONS}


_GLOB_OK = re.compile(r"^[^\s'\";`]+$")


def _validate_globs(value, where: str, *, max_parts: int) -> list[str]:
    out = []
    for i, item in enumerate(_validate_list(value, where)):
        pattern = item.strip().replace('"', "").replace("`", "").lower()
        if len(pattern) > MAX_ITEM_CHARS:
            raise InvalidInput(f"{where}[{i}] is longer than {MAX_ITEM_CHARS} characters")
        if not pattern or not _GLOB_OK.match(pattern):
            raise InvalidInput(
                f"{where}[{i}] must be a name or glob pattern without spaces, quotes or semicolons "
                "(matching is case-insensitive; * and ? are wildcards)"
            )
        parts = pattern.split(".")
        if len(parts) > max_parts or any(not p for p in parts):
            shape = {1: "name", 2: "name or schema.name", 3: "table, schema.table or database.schema.table"}[
                max_parts
            ]
            raise InvalidInput(f"{where}[{i}] must be a {shape} (globs allowed)")
        out.append(pattern)
    return _dedup(out)


def _validate_words(value, where: str) -> list[str]:
    out = []
    for i, item in enumerate(_validate_list(value, where)):
        if len(item) > MAX_ITEM_CHARS:
            raise InvalidInput(f"{where}[{i}] is longer than {MAX_ITEM_CHARS} characters")
        norm = " ".join(_normalize(item).split())
        if not norm:
            raise InvalidInput(f"{where}[{i}] is empty after normalization")
        out.append(norm)
    return _dedup(out)


def _validate_regexes(value, where: str) -> list[str]:
    out = []
    for i, pattern in enumerate(_validate_list(value, where)):
        if len(pattern) > MAX_REGEX_CHARS:
            raise InvalidInput(
                f"{where}[{i}] is {len(pattern)} characters long; at most {MAX_REGEX_CHARS} are allowed"
            )
        try:
            compiled = _compile_regex(pattern)
        except re.error as exc:
            raise InvalidInput(f"{where}[{i}] is not a valid regular expression: {exc}") from None
        risk = _redos_risk(pattern)
        if risk:
            raise InvalidInput(f"{where}[{i}] may take exponential time to match ({risk}); rewrite it")
        if compiled.search("") is not None:
            raise InvalidInput(f"{where}[{i}] matches the empty string, so it would match every text")
        out.append(pattern)
    return _dedup(out)


@lru_cache(maxsize=2048)
def _compile_regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


_REPEATS = {_sre_parser.MAX_REPEAT, _sre_parser.MIN_REPEAT}
if hasattr(_sre_parser, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_sre_parser.POSSESSIVE_REPEAT)


def _redos_risk(pattern: str) -> str | None:
    """A quantified group that itself contains an unbounded quantifier, e.g. (a+)+ or (\\w*x)*."""
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:  # compile already succeeded; be lenient with parser internals
        return None

    def has_unbounded(items) -> bool:
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                if hi == _sre_parser.MAXREPEAT or has_unbounded(sub):
                    return True
            elif op == _sre_parser.SUBPATTERN:
                if has_unbounded(av[-1]):
                    return True
            elif op == _sre_parser.BRANCH:
                if any(has_unbounded(b) for b in av[1]):
                    return True
            elif op in (_sre_parser.ASSERT, _sre_parser.ASSERT_NOT):
                if has_unbounded(av[1]):
                    return True
        return False

    def walk(items) -> str | None:
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                if (hi == _sre_parser.MAXREPEAT or hi > 16) and has_unbounded(sub):
                    return "a repeated group contains an unbounded quantifier, like (a+)+"
                found = walk(sub)
            elif op == _sre_parser.SUBPATTERN:
                found = walk(av[-1])
            elif op == _sre_parser.BRANCH:
                found = next((r for r in (walk(b) for b in av[1]) if r), None)
            elif op in (_sre_parser.ASSERT, _sre_parser.ASSERT_NOT):
                found = walk(av[1])
            else:
                found = None
            if found:
                return found
        return None

    return walk(parsed)


@lru_cache(maxsize=1024)
def _compile_words(words: tuple[str, ...]) -> re.Pattern:
    parts = []
    for word in sorted(words, key=len, reverse=True):
        body = r"\s+".join(re.escape(piece) for piece in word.split())
        if re.match(r"\w", word):
            body = r"(?<!\w)" + body
        if re.search(r"\w$", word):
            body = body + r"(?!\w)"
        parts.append(body)
    return re.compile("|".join(parts))


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern.lower()))


def _glob_any(patterns, candidates) -> bool:
    return any(_glob(p).match(c) for p in patterns for c in candidates)


# ---------------------------------------------------------------------------------------------
# An independent lexer per dialect: what the SERVER would treat as code
# ---------------------------------------------------------------------------------------------


# Real statements that sqlglot reads as bare expressions ("LISTEN c" as the column LISTEN aliased
# c): they are classified by their keyword like any command, not refused as unparseable.
_BARE_STATEMENT_WORDS = frozenset(
    "LISTEN NOTIFY UNLISTEN DISCARD CHECKPOINT FETCH MOVE CLOSE DECLARE DEALLOCATE RELEASE SAVEPOINT "
    "REASSIGN SECURITY IMPORT LOAD FLUSH PURGE RESET HANDLER XA CHECKSUM OPTIMIZE REPAIR SHUTDOWN".split()
)


class _ParseFailure(Exception):
    """The input (or a statement the input runs) cannot be analyzed: fail closed."""


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # word | str | qid | num | param | op | semi
    text: str  # source text (for str/qid: the decoded value)
    start: int
    end: int  # exclusive
    upper: str = ""


_NONASCII = "\u0080-\U0010ffff"
_PG_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>--[^\n\r]*)
   |(?P<block>/\*)
   |(?P<estr>[eE]')
   |(?P<ustr>[uU]&')
   |(?P<uqid>[uU]&")
   |(?P<pstr>[bBxXnN]')
   |(?P<str>')
   |(?P<qid>")
   |(?P<dollar>\$(?:[A-Za-z_{_NONASCII}][A-Za-z0-9_{_NONASCII}]*)?\$)
   |(?P<param>\$\d+)
   |(?P<num>(?:\d|\.\d)[\w.]*)
   |(?P<word>[A-Za-z_{_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>::|:=|\|\||<<|>>|\.\.|.)
    """,
    re.X | re.S,
)
_MY_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>(?:\#|--(?=[\x00-\x20]|\Z))[^\n]*)
   |(?P<exec>/\*[mM]?!\d{{0,6}})
   |(?P<block>/\*)
   |(?P<execend>\*/)
   |(?P<pstr>[xXbB]')
   |(?P<nstr>[nN]')
   |(?P<str>')
   |(?P<dstr>")
   |(?P<bq>`)
   |(?P<param>@@?)
   |(?P<num>(?:\d|\.\d)[\w.$]*)
   |(?P<word>[A-Za-z_${_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>:=|\|\||&&|<=>|.)
    """,
    re.X | re.S,
)
_LITE_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>--[^\n]*)
   |(?P<block>/\*)
   |(?P<pstr>[xX]')
   |(?P<str>')
   |(?P<qid>")
   |(?P<bq>`)
   |(?P<br>\[)
   |(?P<num>(?:\d|\.\d)[\w.]*)
   |(?P<param>[?:@$][\w$]*)
   |(?P<word>[A-Za-z_{_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>\|\||.)
    """,
    re.X | re.S,
)
_STD_STR_END = re.compile(r"(?:[^']|'')*'", re.S)
_ESC_STR_END = re.compile(r"(?:[^'\\]|\\.|'')*'", re.S)
_MY_DSTR_END = re.compile(r'(?:[^"\\]|\\.|"")*"', re.S)
_QID_END = re.compile(r'(?:[^"]|"")*"', re.S)
_BQ_END = re.compile(r"(?:[^`]|``)*`", re.S)
_PG_COMMENT_EDGE = re.compile(r"/\*|\*/")
_WORD_RE = re.compile(rf"[A-Za-z_${_NONASCII}][A-Za-z0-9_${_NONASCII}]*")


def _lex(text: str, dialect: str) -> tuple[list[_Tok], str]:
    """Tokens as the server's lexer would see them, and the text to give sqlglot (for MySQL,
    executable comments opened up; same length, so offsets line up). Raises _ParseFailure."""
    master = {"postgres": _PG_LEX, "mysql": _MY_LEX, "sqlite": _LITE_LEX}[dialect]
    toks: list[_Tok] = []
    out = list(text) if dialect == "mysql" else None
    in_exec = False
    pos, n = 0, len(text)
    while pos < n:
        m = master.match(text, pos)
        kind = m.lastgroup
        end = m.end()
        if kind in ("ws", "line"):
            pass
        elif kind == "block":
            if dialect == "postgres":
                depth, scan = 1, end
                while depth:
                    edge = _PG_COMMENT_EDGE.search(text, scan)
                    if not edge:
                        raise _ParseFailure("has an unterminated /* comment")
                    depth += 1 if edge.group() == "/*" else -1
                    scan = edge.end()
                end = scan
            else:
                close = text.find("*/", end)
                if close < 0:
                    if dialect == "sqlite":
                        end = n
                    else:
                        raise _ParseFailure("has an unterminated /* comment")
                else:
                    end = close + 2
        elif kind == "exec":
            in_exec = True
            out[pos:end] = " " * (end - pos)
        elif kind == "execend":
            if in_exec:
                in_exec = False
                out[pos:end] = "  "
            else:
                toks.append(_Tok("op", "*", pos, pos + 1))
                end = pos + 1
        elif kind in ("str", "pstr", "ustr", "estr", "nstr", "dstr"):
            tok, end = _string_token(text, m, dialect, kind)
            prev = toks[-1] if toks else None
            if (
                dialect == "mysql"
                and prev is not None
                and prev.kind == "str"
                and tok.kind == "str"
                and kind in ("str", "dstr")
            ):
                # MySQL concatenates adjacent literals ('DEL' 'ETE' is 'DELETE'): one token, as the server reads it.
                toks[-1] = _Tok("str", prev.text + tok.text, prev.start, tok.end)
            else:
                toks.append(tok)
        elif kind in ("qid", "uqid", "bq", "br"):
            if kind == "br":
                close = text.find("]", end)
                if close < 0:
                    raise _ParseFailure("has an unterminated [identifier]")
                end = close + 1
                value = text[pos + 1 : close]
            else:
                sm = (_BQ_END if kind == "bq" else _QID_END).match(text, end)
                if not sm:
                    raise _ParseFailure("has an unterminated quoted identifier")
                q = "`" if kind == "bq" else '"'
                value = text[m.end() : sm.end() - 1].replace(q + q, q)
                end = sm.end()
            toks.append(_Tok("qid", value, pos, end))
        elif kind == "dollar":
            tag = m.group()
            close = text.find(tag, end)
            if close < 0:
                raise _ParseFailure("has an unterminated dollar-quoted string")
            toks.append(_Tok("str", text[end:close], pos, close + len(tag)))
            end = close + len(tag)
        elif kind == "word":
            toks.append(_Tok("word", m.group(), pos, end, m.group().upper()))
        elif kind == "semi":
            toks.append(_Tok("semi", ";", pos, end))
        else:  # num, param, op
            toks.append(_Tok(kind, m.group(), pos, end, m.group().upper()))
        pos = end
    return toks, ("".join(out) if out is not None else text)


_PG_CONTINUE = re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]+|--[^\n\r]*[\n\r])*'")
_UESCAPE = re.compile(r"(?:\s|--[^\n\r]*|/\*(?:[^*]|\*(?!/))*\*/)*UESCAPE\b", re.I)
_UESCAPE_CHAR = re.compile(r"(?:\s|--[^\n\r]*|/\*(?:[^*]|\*(?!/))*\*/)*'((?:[^']|'')*)'")


def _string_token(text: str, m: re.Match, dialect: str, kind: str) -> tuple[_Tok, int]:
    """One string literal as the server reads it: decoded exactly (governance/sql_strings.py),
    PostgreSQL continuation lines joined, a U&'' string's UESCAPE applied. Bit and binary strings
    that are not text get kind "bits" (never re-parsed as SQL). Raises _ParseFailure where the
    server's reading is invalid or uncertain."""
    pos, quote_end = m.start(), m.end()
    if dialect == "mysql" and kind in ("str", "nstr", "dstr"):
        finder = _MY_DSTR_END if kind == "dstr" else _ESC_STR_END
    elif kind == "estr":
        finder = _ESC_STR_END
    else:
        finder = _STD_STR_END
    parts = []
    while True:
        sm = finder.match(text, quote_end)
        if not sm:
            raise _ParseFailure("has an unterminated string")
        end = sm.end()
        parts.append(text[quote_end : end - 1])
        if dialect != "postgres":
            break
        cont = _PG_CONTINUE.match(text, end)
        if not cont:
            break
        quote_end = cont.end()  # 'a'<newline>'b' is one literal 'ab' (same kind as the first part)
    prefix = text[pos : m.end() - 1].upper()
    try:
        if dialect == "mysql":
            if kind == "pstr":
                raw = "".join(parts)
                if prefix == "X":
                    if len(raw) % 2 or not re.fullmatch(r"[0-9A-Fa-f]*", raw):
                        raise sql_strings.Undecodable("invalid hexadecimal literal")
                    data = bytes.fromhex(raw)
                else:  # b'0101'
                    if not re.fullmatch(r"[01]*", raw):
                        raise sql_strings.Undecodable("invalid bit literal")
                    data = int(raw or "0", 2).to_bytes((len(raw) + 7) // 8, "big")
                try:
                    return _Tok("str", sql_strings.utf8(data), pos, end), end
                except sql_strings.Undecodable:
                    return _Tok("bits", raw, pos, end), end
            quote = '"' if kind == "dstr" else "'"
            data = b"".join(sql_strings.mysql_bytes(p, quote) for p in parts)
            if b"\0" in data:
                return _Tok("bits", "", pos, end), end
            return _Tok("str", sql_strings.utf8(data), pos, end), end
        if kind == "estr":
            data = b"".join(sql_strings.pg_escape_bytes(p) for p in parts)
            return _Tok("str", sql_strings.utf8(data), pos, end), end
        if kind == "ustr":
            escape = "\\"
            um = _UESCAPE.match(text, end)
            if um:
                cm = _UESCAPE_CHAR.match(text, um.end())
                if not cm:
                    raise sql_strings.Undecodable("UESCAPE must be followed by a one-character string")
                escape = cm.group(1).replace("''", "'")
                end = cm.end()
            return _Tok("str", sql_strings.pg_unicode("".join(parts), escape), pos, end), end
        if kind == "pstr" and prefix in ("B", "X"):
            return _Tok("bits", "".join(parts), pos, end), end
        return _Tok("str", "".join(p.replace("''", "'") for p in parts), pos, end), end
    except sql_strings.Undecodable as exc:
        raise _ParseFailure(
            f"has a string literal the server would not read with certainty ({exc})"
        ) from None


def _split(toks: list[_Tok]) -> list[list[_Tok]]:
    chunks, cur = [], []
    for tok in toks:
        if tok.kind == "semi":
            chunks.append(cur)
            cur = []
        else:
            cur.append(tok)
    chunks.append(cur)
    return chunks


# ---------------------------------------------------------------------------------------------
# sqlglot plumbing (thread-local tokenizers and parsers)
# ---------------------------------------------------------------------------------------------

_local = threading.local()
_STRINGY = frozenset(t for t in TokenType if "STRING" in t.name) | {TokenType.IDENTIFIER}


def _sqlglot(dialect: str):
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    pair = cache.get(dialect)
    if pair is None:
        d = Dialect.get_or_raise(dialect)
        pair = cache[dialect] = (d.tokenizer(), d.parser())
    return pair


def _short(exc: Exception) -> str:
    if isinstance(exc, ParseError) and exc.errors:
        err = exc.errors[0]
        near = (err.get("highlight") or "").strip()
        desc = err.get("description") or "syntax error"
        where = f" at line {err.get('line')}, column {err.get('col')}" if err.get("line") else ""
        return f"{desc}{f' near {near[:40]!r}' if near else ''}{where}"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return message[:160]


@dataclass
class _Stmt:
    ast: exp.Expr | None
    toks: list[_Tok]  # the server's view of the statement (absolute offsets)
    text: str  # the statement's text, between separators
    base: int  # offset of `text` in the (rewritten) input


def _parse_batch(text: str, dialect: str) -> list[_Stmt]:
    """Lex, cross-check with sqlglot's tokenizer, split and parse. Raises _ParseFailure."""
    if "\x00" in text:
        raise _ParseFailure("contains a NUL character")
    text = text.replace("\f", " ").replace("\v", " ")
    toks, sql = _lex(text, dialect)
    tokenizer, parser = _sqlglot(dialect)
    try:
        sg = tokenizer.tokenize(sql)
    except (TokenError, SqlglotError) as exc:
        raise _ParseFailure(_short(exc)) from None

    # Cross-check: every code word and separator the server's lexer sees, sqlglot must see too.
    mine = Counter(w.lower() for t in toks if t.kind == "word" for w in _WORD_RE.findall(t.text))
    seen: Counter = Counter()
    commands = tokenizer.COMMANDS
    for i, t in enumerate(sg):
        if t.token_type in _STRINGY:
            tail = i > 0 and sg[i - 1].token_type in commands and t.token_type == TokenType.STRING
            if tail and (i == 1 or sg[i - 2].token_type in tokenizer.COMMAND_PREFIX_TOKENS):
                # sqlglot keeps the rest of a command as raw text: its code words count.
                try:
                    tail_toks, _ = _lex(t.text, dialect)
                except _ParseFailure:
                    tail_toks = []
                seen.update(
                    w.lower() for tt in tail_toks if tt.kind == "word" for w in _WORD_RE.findall(tt.text)
                )
            continue
        seen.update(w.lower() for w in _WORD_RE.findall(t.text))
    missing = [w for w, c in mine.items() if seen[w] < c]
    if missing:
        raise _ParseFailure(
            f"is tokenized differently than the server would (around {missing[0]!r}); refusing to guess"
        )
    my_semis = [t.start for t in toks if t.kind == "semi"]
    if len(my_semis) >= MAX_STATEMENTS:
        raise _ParseFailure(
            f"has {len(my_semis) + 1} statements or more; at most {MAX_STATEMENTS} are analyzed"
        )
    sg_semis = [t.start for t in sg if t.token_type == TokenType.SEMICOLON]
    if my_semis != sg_semis:
        raise _ParseFailure("has statement separators that are ambiguous; refusing to guess")

    sg_chunks: list[list] = [[]]
    for t in sg:
        if t.token_type == TokenType.SEMICOLON:
            sg_chunks.append([])
        else:
            sg_chunks[-1].append(t)
    my_chunks = _split(toks)
    bounds = [-1, *my_semis, len(sql)]
    stmts = []
    for k, (sg_chunk, my_chunk) in enumerate(zip(sg_chunks, my_chunks, strict=True)):
        if not my_chunk:
            continue
        try:
            ast = parser.parse(sg_chunk, sql)[0] if sg_chunk else None
        except (ParseError, TokenError, SqlglotError) as exc:
            ast = _fallback_parse(my_chunk, dialect, exc)
        except RecursionError:
            raise _ParseFailure("is nested too deeply to analyze") from None
        stmts.append(_Stmt(ast, my_chunk, sql[bounds[k] + 1 : bounds[k + 1]], bounds[k] + 1))
    return stmts


def _fallback_parse(toks: list[_Tok], dialect: str, exc: Exception) -> None:
    """Statements sqlglot does not parse but we can still classify by keyword (MySQL DO)."""
    if dialect == "mysql" and toks[0].upper == "DO":
        return None  # handled by the keyword path, which parses the expressions itself
    raise _ParseFailure(_short(exc))


# ---------------------------------------------------------------------------------------------
# SQL analysis: facts about each top-level statement, independent of the rules
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ref:
    display: str
    candidates: tuple[str, ...]  # lower-case names to match globs against


class _Facts:
    __slots__ = (
        "index",
        "kinds",
        "writes",
        "where",
        "tables",
        "schemas",
        "functions",
        "opaque",
        "side_effects",
    )

    def __init__(self, index: int):
        self.index = index
        self.kinds: dict[str, str] = {}
        self.writes: list[str] = []
        self.where: list[str] = []
        self.tables: list[_Ref] = []
        self.schemas: list[_Ref] = []
        self.functions: list[_Ref] = []
        self.opaque: list[str] = []
        self.side_effects: list[tuple[str, str]] = []  # (class, detail)


@dataclass
class _Analysis:
    statements: list[_Facts]
    error: str | None = None


class _Analyzer:
    def __init__(self, dialect: str):
        self.dialect = dialect
        self.depth = 0
        self.search_path: tuple[str, ...] = _DEFAULT_SCHEMAS[dialect]
        self.current_db: str | None = None
        self.prepared: set[str] = set()
        self.user_vars: dict[str, str | None] = {}
        self.denied = READ_ONLY_DENIED_FUNCTIONS[dialect]
        self.lead = ""
        self.sql_text_functions = _SQL_TEXT_FUNCTIONS[dialect]
        self.table_name_functions = _TABLE_NAME_FUNCTIONS[dialect]
        self.strings: dict[int, _Tok] = {}
        self.current_text, self.current_base = "", 0
        self.replacing = False  # inside REPLACE INTO (MySQL): conflicting rows are deleted
        self.side_effect_functions = SIDE_EFFECT_FUNCTIONS[dialect]

    # -- entry points -----------------------------------------------------------------------

    def run(self, text: str) -> _Analysis:
        if len(text) > MAX_SQL_CHARS:
            return _Analysis([], f"is too large to analyze ({len(text)} characters; at most {MAX_SQL_CHARS})")
        try:
            stmts = _parse_batch(text, self.dialect)
            out = []
            for i, stmt in enumerate(stmts, start=1):
                facts = _Facts(i)
                self.statement(stmt, facts, "")
                out.append(facts)
            return _Analysis(out)
        except _ParseFailure as exc:
            return _Analysis([], str(exc))
        except RecursionError:
            return _Analysis([], "is nested too deeply to analyze")

    def nested(self, text: str, facts: _Facts, label: str, *, on_fail: str) -> None:
        """Analyze SQL found inside the statement (a literal, the tail of EXPLAIN, ...)."""
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return
        self.depth += 1
        try:
            try:
                stmts = _parse_batch(text, self.dialect)
            except _ParseFailure as exc:
                if on_fail == "error":
                    raise _ParseFailure(f"the statement {label} {exc}") from None
                facts.opaque.append(f"SQL {label} does not parse")
                return
            for stmt in stmts:
                self.statement(stmt, facts, label)
        finally:
            self.depth -= 1

    def expression(self, text: str, facts: _Facts, label: str) -> bool:
        """Analyze an expression (functions, subqueries, tables) without counting a SELECT."""
        if not text.strip():
            return True
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return False
        self.depth += 1
        try:
            stmts = _parse_batch("SELECT " + text, self.dialect)
        except _ParseFailure:
            return False
        finally:
            self.depth -= 1
        if len(stmts) != 1 or not isinstance(stmts[0].ast, exp.Select):
            return False
        self.tree(stmts[0].ast, facts, label, count_root=False)
        return True

    # -- statements -------------------------------------------------------------------------

    def add_kind(self, facts: _Facts, kind: str, detail: str, *, write: bool | None = None) -> None:
        facts.kinds.setdefault(kind, detail)
        if write is None:
            write = kind not in _READ_KINDS
        if write:
            facts.writes.append(detail)

    @staticmethod
    def label_detail(word: str, label: str) -> str:
        return f"{word} {label}" if label else word

    def statement(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        saved = self.strings, self.current_text, self.current_base
        self.strings = {t.start: t for t in stmt.toks if t.kind in ("str", "bits")}
        self.current_text, self.current_base = stmt.text, stmt.base
        try:
            self._statement(stmt, facts, label)
        finally:
            self.strings, self.current_text, self.current_base = saved

    def server_string(self, node) -> str | None:
        """The text the server reads for a string literal of sqlglot's tree: our lexer's token at
        the same offset (decoded exactly), never sqlglot's own decoding. None if it is not a text
        literal, or cannot be matched with certainty (the caller then fails closed)."""
        if not isinstance(node, _STRING_NODES) or (isinstance(node, exp.Literal) and not node.is_string):
            return None
        start = (node.meta or {}).get("start") if hasattr(node, "meta") else None
        tok = self.strings.get(start) if start is not None else None
        if tok is not None:
            return tok.text if tok.kind == "str" else None
        if isinstance(node, (exp.Heredoc, exp.RawString)) and self.dialect == "postgres":
            # Dollar quoting has no escapes: sqlglot's text is the server's, if we saw it too.
            if any(t.kind == "str" and t.text == node.this for t in self.strings.values()):
                return node.this
        return None

    def mysql_user_var_writes(self, toks: list[_Tok]) -> None:
        """`SELECT @v := ...`, `... INTO @v`: a user variable changed by something other than a SET
        of a literal is no longer known (PREPARE FROM @v is then opaque)."""
        for k, t in enumerate(toks):
            if t.kind == "param" and k + 1 < len(toks) and toks[k + 1].kind == "word":
                name = toks[k + 1].text.lower()
                after = toks[k + 2].text if k + 2 < len(toks) else ""
                before = toks[k - 1].upper if k > 0 else ""
                if after == ":=" or before in ("INTO", ","):
                    self.user_vars[name] = None

    def _statement(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        ast, toks = stmt.ast, stmt.toks
        if self.dialect == "mysql" and toks and toks[0].upper != "SET":
            self.mysql_user_var_writes(toks)
        self.statement_effects(toks, facts, label)
        lead = next((t for t in toks if t.kind != "op" or t.text != "("), toks[0])
        self.lead = lead.upper
        cls_kind = _CLASS_KIND.get(type(ast)) if ast is not None else None
        if isinstance(ast, _QUERY_CLASSES):
            cls_kind = "select"
            if lead.upper not in ("SELECT", "WITH", "VALUES", "TABLE"):
                cls_kind = None  # a keyword sqlglot mistook for an expression
        if ast is not None and not isinstance(ast, exp.Command) and cls_kind is None:
            if lead.upper.lower() not in _KEYWORD_KIND and lead.upper not in _BARE_STATEMENT_WORDS:
                # sqlglot read a bare expression ("SELEC * FRM t" is SELEC * FRM AS t): no server
                # would run it as a statement, and we do not guess what it was meant to be.
                raise _ParseFailure(f"does not start with a statement keyword ({lead.text[:40]!r})")
        if ast is None or isinstance(ast, exp.Command) or cls_kind is None:
            self.command(stmt, facts, label)
            if ast is not None and not isinstance(ast, exp.Command):
                self.tree(ast, facts, label, count_root=False)
                self.token_calls(ast, toks, facts)
            return
        self.tree(ast, facts, label, count_root=True)
        self.token_calls(ast, toks, facts)

    def side_effect(self, facts: _Facts, cls: str, detail: str, label: str) -> None:
        facts.side_effects.append((cls, self.label_detail(detail, label)))

    def statement_effects(self, toks: list[_Tok], facts: _Facts, label: str) -> None:
        """What a statement does beyond its keyword, read off the server's tokens: side effects on the
        server, stored code and what its body will do when it fires, drops by another name."""
        if not toks:
            return
        words = [t.upper if t.kind == "word" else "" for t in toks]
        head, d = words[0], self.dialect
        second = words[1] if len(words) > 1 else ""
        if head == "COPY":
            for k, w in enumerate(words):
                if w in ("TO", "FROM") and k + 1 < len(toks):
                    nxt = toks[k + 1]
                    if nxt.kind == "word" and nxt.upper == "PROGRAM":
                        self.side_effect(
                            facts, "program", "COPY ... PROGRAM runs a command on the database host", label
                        )
                    elif nxt.kind in ("str", "bits"):
                        self.side_effect(
                            facts, "file", "COPY reads or writes a file on the database host", label
                        )
        elif head == "ALTER" and second == "SYSTEM":
            self.side_effect(facts, "server_config", "ALTER SYSTEM changes the server's configuration", label)
        elif head == "ALTER" and second in ("DATABASE", "ROLE", "USER") and "SET" in words[2:]:
            self.side_effect(facts, "server_config", f"ALTER {second} ... SET changes stored settings", label)
        elif head == "LOAD" and d == "postgres":
            self.side_effect(facts, "program", "LOAD loads a shared library into the server", label)
        elif head in ("KILL", "SHUTDOWN", "CHECKPOINT", "RESTART"):
            self.side_effect(facts, "server_control", f"{head} acts on the server", label)
        elif head in ("INSTALL", "UNINSTALL"):
            self.side_effect(facts, "program", f"{head} loads or unloads server code", label)
        elif head == "ATTACH" or (head == "VACUUM" and "INTO" in words):
            self.side_effect(facts, "file", f"{head} creates or opens a file on the host", label)
        elif head == "SET" and d == "mysql":
            scoped = any(w in ("GLOBAL", "PERSIST", "PERSIST_ONLY") for w in words[1:])
            scoped = scoped or any(
                t.kind == "param"
                and t.text == "@@"
                and k + 1 < len(toks)
                and toks[k + 1].upper in ("GLOBAL", "PERSIST", "PERSIST_ONLY")
                for k, t in enumerate(toks)
            )
            if scoped:
                self.side_effect(
                    facts, "server_config", "SET GLOBAL/PERSIST changes the server's configuration", label
                )
        if head == "CREATE" or (head == "ALTER" and second == "EVENT"):
            self.create_effects(toks, words, facts, label)

    def create_effects(self, toks: list[_Tok], words: list[str], facts: _Facts, label: str) -> None:
        i = 1
        while i < len(words) and words[i] in (
            "OR",
            "REPLACE",
            "TEMP",
            "TEMPORARY",
            "GLOBAL",
            "LOCAL",
            "UNLOGGED",
            "CONSTRAINT",
            "AGGREGATE",
            "DEFINER",
            "SQL",
            "SECURITY",
            "INVOKER",
            "ALGORITHM",
            "UNDEFINED",
            "MERGE",
            "TEMPTABLE",
            "DEFAULT",
            "UNIQUE",
            "NONCLUSTERED",
            "CLUSTERED",
        ):
            i += 1
            if i < len(toks) and toks[i].text == "=":  # DEFINER = user@host, ALGORITHM = x
                i += 2
                while i < len(toks) and (
                    toks[i].kind == "param"
                    or toks[i].text in ("@",)
                    or (i > 0 and toks[i - 1].kind == "param")
                ):
                    i += 1
        obj = words[i] if i < len(words) else ""
        replace = "REPLACE" in words[1:i]
        if obj == "TABLE" and replace:
            self.add_kind(
                facts, "drop", self.label_detail("CREATE OR REPLACE TABLE (drops the existing table)", label)
            )
        elif (
            obj in ("EXTENSION", "LANGUAGE")
            or (obj == "TRUSTED" and "LANGUAGE" in words)
            or obj == "PROCEDURAL"
        ):
            self.side_effect(facts, "program", f"CREATE {obj} loads code into the server", label)
        if obj not in ("FUNCTION", "PROCEDURE", "TRIGGER", "RULE", "EVENT"):
            return
        self.add_kind(facts, "stored_code", self.label_detail(f"{words[0]} {obj} (stored code)", label))
        if "BEGIN" in words and (self.dialect == "mysql" or "ATOMIC" in words):
            # The server reads a compound body (BEGIN ... END with ';' inside) as one statement;
            # its parts cannot be split and checked with certainty here.
            raise _ParseFailure(
                f"has a {obj.lower()} with a compound BEGIN ... END body, which is not analyzed"
            )
        if obj in ("FUNCTION", "PROCEDURE"):
            language = next(
                (
                    toks[k + 1].text.lower()
                    for k, w in enumerate(words)
                    if w == "LANGUAGE" and k + 1 < len(toks)
                ),
                "sql",
            )
            if language in ("c", "internal") or (
                language.endswith("u") and language not in ("sql", "plpgsql")
            ):
                self.side_effect(
                    facts, "program", f"a {language} {obj.lower()} runs code on the database host", label
                )
            return
        body_at = None
        if obj == "RULE":
            body_at = next((k + 1 for k, w in enumerate(words) if w == "DO" and k > i), None)
            while body_at is not None and body_at < len(words) and words[body_at] in ("ALSO", "INSTEAD"):
                body_at += 1
        elif obj == "TRIGGER" and self.dialect == "mysql":
            row_at = next(
                (k for k in range(i, len(words) - 2) if words[k : k + 3] == ["FOR", "EACH", "ROW"]), None
            )
            if row_at is not None:
                body_at = row_at + 3
                if body_at < len(words) and words[body_at] in ("FOLLOWS", "PRECEDES"):
                    body_at += 2
        elif obj == "EVENT":
            body_at = next((k + 1 for k, w in enumerate(words) if w == "DO" and k > i), None)
        else:
            return  # a PostgreSQL trigger runs a function, checked when that function is created
        if body_at is None or body_at >= len(toks):
            facts.opaque.append(self.label_detail(f"the body of CREATE {obj} could not be found", label))
            return
        if words[body_at] == "NOTHING":
            return
        start, end = toks[body_at].start, toks[-1].end
        body = self.current_text[start - self.current_base : end - self.current_base]
        if body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        self.nested(body, facts, f"in the body of {words[0]} {obj} (as if it ran now)", on_fail="error")

    def token_calls(self, ast: exp.Expr, toks: list[_Tok], facts: _Facts) -> None:
        """Names written as calls (`name(`) that the tree does not show as functions: sqlglot maps
        some built-ins to typed nodes named differently (IFNULL -> COALESCE), so match as written."""
        known = {c for ref in facts.functions for c in ref.candidates}
        names = None
        for k in range(len(toks) - 1):
            t = toks[k]
            if toks[k + 1].text != "(" or t.kind not in ("word", "qid"):
                continue
            low = t.text.lower()
            if low in known or (t.kind == "word" and low in _NOT_CALLS):
                continue
            if names is None:  # identifiers the tree uses as tables, aliases, columns: not calls
                names = {
                    i.name.lower() for i in ast.find_all(exp.Identifier) if not isinstance(i.parent, exp.Func)
                }
            if low in names:
                continue
            parts = [t.text]
            if k >= 2 and toks[k - 1].text == "." and toks[k - 2].kind in ("word", "qid"):
                parts.insert(0, toks[k - 2].text)
            self.function_ref(parts, facts)
            known.add(low)

    def command(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        """Statements sqlglot only knows as a generic command: classify by the leading keyword."""
        toks = stmt.toks
        head = toks[0]
        word = head.upper if head.kind == "word" else head.text
        kind = _KEYWORD_KIND.get(word.lower(), "other")
        detail = self.label_detail(word, label)
        rest = _text_from(stmt, toks[1]) if len(toks) > 1 else ""
        rest_toks = toks[1:]
        d = self.dialect

        if word == "EXPLAIN":
            self.add_kind(facts, "explain", detail)
            i = 1
            if i < len(toks) and toks[i].text == "(":
                i = _skip_parens(toks, i)
            while i < len(toks) and toks[i].upper in ("ANALYZE", "ANALYSE", "VERBOSE", "QUERY", "PLAN"):
                i += 1
            if i >= len(toks):
                raise _ParseFailure("has EXPLAIN without a statement")
            self.nested(_text_from(stmt, toks[i]), facts, "inside EXPLAIN", on_fail="error")
        elif word == "PREPARE":
            self.add_kind(facts, "prepare", detail)
            name = rest_toks[0].text.lower() if rest_toks else ""
            as_at = next((i for i, t in enumerate(toks) if t.upper in ("AS", "FROM") and i >= 2), None)
            if as_at is None or as_at + 1 >= len(toks):
                raise _ParseFailure("has PREPARE without a statement")
            body = toks[as_at + 1]
            if d == "mysql" and toks[as_at].upper == "FROM":
                if body.kind == "str":
                    self.nested(body.text, facts, "inside PREPARE", on_fail="opaque")
                elif body.kind == "param" and as_at + 2 < len(toks):
                    value = self.user_vars.get(toks[as_at + 2].text.lower())
                    if value is None:
                        facts.opaque.append(
                            "PREPARE from a user variable whose value is not a literal in this input"
                        )
                    else:
                        self.nested(value, facts, "inside PREPARE", on_fail="opaque")
                else:
                    facts.opaque.append("PREPARE from an expression that is not a string literal")
            else:
                self.nested(_text_from(stmt, body), facts, "inside PREPARE", on_fail="error")
            self.prepared.add(name)
        elif word in ("EXECUTE", "EXEC"):
            self.add_kind(facts, "execute", detail)
            name = rest_toks[0].text.lower() if rest_toks else ""
            if name not in self.prepared:
                facts.opaque.append(
                    f"EXECUTE runs prepared statement {name!r}, which this input does not define"
                )
            if d == "postgres" and len(toks) > 2 and toks[2].text == "(":
                if not self.expression(_text_from(stmt, toks[2]), facts, "in EXECUTE arguments"):
                    facts.opaque.append("EXECUTE arguments do not parse")
        elif word == "DEALLOCATE":
            self.add_kind(facts, "prepare", detail)
        elif word == "DO":
            self.add_kind(facts, "do", detail)
            if d == "postgres":
                self.do_block(toks, facts)
            elif not self.expression(rest, facts, "inside DO"):
                raise _ParseFailure("has a DO statement whose expressions do not parse")
        elif word == "CALL":
            self.add_kind(facts, "call", detail)
            if not self.expression(rest, facts, "in CALL"):
                raise _ParseFailure("has a CALL that does not parse")
        elif word == "REPLACE":
            self.add_kind(facts, "insert", detail)
            self.add_kind(facts, "delete", detail)
            self.replacing = True
            try:
                self.nested("INSERT " + rest, facts, label, on_fail="error")
            finally:
                self.replacing = False
        elif word in ("SET", "RESET"):
            self.add_kind(facts, "set", detail)
            self.track_set(word, rest_toks)
        elif word == "DECLARE":
            self.add_kind(facts, "other", detail)
            for_at = next((i for i, t in enumerate(toks) if t.upper == "FOR"), None)
            if for_at is not None and for_at + 1 < len(toks):
                self.nested(
                    _text_from(stmt, toks[for_at + 1]), facts, "inside DECLARE CURSOR", on_fail="error"
                )
        elif word == "SHOW":
            self.add_kind(facts, "show", detail)  # PostgreSQL: SHOW <setting>; no object names
        elif word in ("DESCRIBE", "DESC"):
            self.add_kind(facts, "show", detail)
            self.scan(rest_toks, facts, label, nested_kinds=False)
        else:
            self.add_kind(facts, kind, detail)
            self.scan(rest_toks, facts, label, nested_kinds=True)
            if word == "CREATE" and any(t.upper in ("FUNCTION", "PROCEDURE") for t in toks[1:5]):
                self.command_routine_body(toks, facts)

    def command_routine_body(self, toks: list[_Tok], facts: _Facts) -> None:
        """CREATE FUNCTION/PROCEDURE that sqlglot could not parse: still read its body."""
        language, body = "sql", None
        for i, t in enumerate(toks):
            if t.upper == "LANGUAGE" and i + 1 < len(toks):
                language = toks[i + 1].text.lower()
            elif t.upper == "AS" and i + 1 < len(toks) and toks[i + 1].kind == "str":
                body = toks[i + 1].text
        if body is None:
            facts.opaque.append("the body of CREATE FUNCTION/PROCEDURE could not be found")
        else:
            self.routine_body(body, language, facts, "inside CREATE FUNCTION")

    def track_set(self, word: str, toks: list[_Tok]) -> None:
        if self.dialect != "postgres":
            return
        names = [t.upper for t in toks[:2]]
        if word == "RESET" and names and names[0] in ("SEARCH_PATH", "ALL"):
            return  # back to the default, which stays among the candidates
        i = 1 if names and names[0] in ("SESSION", "LOCAL") else 0
        if i < len(toks) and toks[i].upper == "SEARCH_PATH":
            values = [t.text.lower() for t in toks[i + 2 :] if t.kind in ("word", "str", "qid")]
            self.add_search_path(values)

    def add_search_path(self, schemas: list[str]) -> None:
        """Unqualified names are tried in every schema any search_path of the batch named (a
        superset of where the server resolves them; conservative for deny lists)."""
        schemas = [s.strip().strip('"').lower() for s in schemas]
        schemas = [s for s in schemas if s and s not in ("$user", "default")]
        self.search_path = tuple(dict.fromkeys([*self.search_path, *schemas]))

    def scan(self, toks: list[_Tok], facts: _Facts, label: str, *, nested_kinds: bool) -> None:
        """Token scan of a generic command: dotted names are tables (or functions before '(')."""
        i = 0
        while i < len(toks):
            t = toks[i]
            if t.kind in ("word", "qid"):
                parts = [t]
                j = i + 1
                while j + 1 < len(toks) and toks[j].text == "." and toks[j + 1].kind in ("word", "qid"):
                    parts.append(toks[j + 1])
                    j += 2
                names = [p.text for p in parts]
                if (
                    nested_kinds
                    and len(parts) == 1
                    and t.kind == "word"
                    and t.upper.lower() in _NESTED_KEYWORDS
                ):
                    kw = t.upper.lower()
                    self.add_kind(facts, kw, self.label_detail(f"{t.upper} inside {self.lead}", label))
                if j < len(toks) and toks[j].text == "(":
                    self.function_ref(names, facts)
                elif not (len(parts) == 1 and t.kind == "word" and t.upper in _SCAN_SKIP) and not (
                    i > 0 and toks[i - 1].upper == "LANGUAGE"
                ):
                    self.table_ref(names, facts)
                i = j
            else:
                i += 1

    # -- PL/pgSQL ---------------------------------------------------------------------------

    def do_block(self, toks: list[_Tok], facts: _Facts) -> None:
        body = None
        language = "plpgsql"
        for i, t in enumerate(toks[1:], start=1):
            if t.upper == "LANGUAGE" and i + 1 < len(toks):
                language = toks[i + 1].text.lower()
            elif t.kind == "str" and body is None:
                body = t.text
        if body is None:
            raise _ParseFailure("has a DO statement without a body")
        self.routine_body(body, language, facts, "inside a DO block")

    def routine_body(self, body: str, language: str, facts: _Facts, label: str) -> None:
        if language == "sql":
            self.nested(body, facts, label, on_fail="opaque")
        elif language == "plpgsql":
            self.plpgsql(body, facts, label)
        else:
            facts.opaque.append(f"code in language {language!r} {label} cannot be analyzed")

    def plpgsql(self, body: str, facts: _Facts, label: str) -> None:
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return
        try:
            toks, _ = _lex(body, "postgres")
        except _ParseFailure:
            facts.opaque.append(f"the code {label} does not parse")
            return
        self.depth += 1
        try:
            declaring = False
            for chunk in _split(toks):
                declaring = self.plpgsql_statement(body, chunk, facts, label, declaring)
        finally:
            self.depth -= 1

    def plpgsql_statement(
        self, body: str, toks: list[_Tok], facts: _Facts, label: str, declaring: bool
    ) -> bool:
        def text(a: int, b: int | None = None) -> str:
            if a >= len(toks):
                return ""
            end = (
                toks[b - 1].end if b is not None and b > a else (toks[-1].end if b is None else toks[a].start)
            )
            return body[toks[a].start : end]

        def find(words, start=0) -> int | None:
            depth = 0
            for k in range(start, len(toks)):
                tx = toks[k].text
                depth += tx == "("
                depth -= tx == ")"
                if depth == 0 and toks[k].upper in words:
                    return k
            return None

        def expr(a: int, b: int | None = None) -> None:
            if not self.expression(text(a, b), facts, label):
                facts.opaque.append(f"an expression {label} does not parse")

        i = 0
        while i < len(toks):
            head = toks[i].upper
            if head == "DECLARE":
                declaring, i = True, i + 1
            elif head == "BEGIN":
                declaring, i = False, i + 1
            elif declaring:
                at = find((":=", "=", "DEFAULT"), i)
                if at is not None:
                    expr(at + 1)
                return True
            elif head == "<<":
                close = find((">>",), i)
                i = close + 1 if close is not None else len(toks)
            elif head == "END":
                return False
            elif head in ("IF", "ELSIF", "ELSEIF", "WHEN", "WHILE"):
                stop = find(("THEN", "LOOP"), i + 1)
                if stop is None:
                    facts.opaque.append(f"a {head} {label} could not be read")
                    return False
                if head != "WHEN" or toks[i + 1].upper not in ("OTHERS", "SQLSTATE"):
                    expr(i + 1, stop)
                i = stop + 1
            elif head == "EXCEPTION":
                i += 1
            elif head in ("ELSE", "LOOP"):
                i += 1
            elif head == "CASE":
                stop = find(("WHEN",), i + 1)
                if stop is None:
                    return False
                expr(i + 1, stop)
                i = stop
            elif head in ("FOR", "FOREACH"):
                in_at = find(("IN",), i + 1)
                loop_at = find(("LOOP",), i + 1)
                if in_at is None or loop_at is None:
                    facts.opaque.append(f"a FOR loop {label} could not be read")
                    return False
                first = toks[in_at + 1].upper if in_at + 1 < len(toks) else ""
                if first == "EXECUTE":
                    self.dynamic(body, toks[in_at + 2 : loop_at], facts, label)
                elif first in ("SELECT", "WITH", "VALUES", "TABLE"):
                    self.nested(text(in_at + 1, loop_at), facts, label, on_fail="opaque")
                else:
                    range_text = text(in_at + 1, loop_at).replace("..", ",")
                    if first == "ARRAY":
                        range_text = range_text[5:]
                    if not self.expression(range_text, facts, label):
                        facts.opaque.append(f"a FOR loop range {label} does not parse")
                i = loop_at + 1
            else:
                break
        if i >= len(toks):
            return declaring
        head = toks[i].upper
        nxt = toks[i + 1].upper if i + 1 < len(toks) else ""
        if head == "EXECUTE":
            self.dynamic(body, toks[i + 1 :], facts, label)
        elif head == "PERFORM":
            expr(i + 1)
        elif head == "RETURN":
            if nxt == "QUERY":
                if i + 2 < len(toks) and toks[i + 2].upper == "EXECUTE":
                    self.dynamic(body, toks[i + 3 :], facts, label)
                else:
                    self.nested(text(i + 2), facts, label, on_fail="opaque")
            else:
                expr(i + 2 if nxt == "NEXT" else i + 1)
        elif head == "RAISE":
            at = next((k for k in range(i + 1, len(toks)) if toks[k].kind == "str"), None)
            using = find(("USING",), i + 1)
            if at is not None and at + 1 < len(toks) and toks[at + 1].text == ",":
                expr(at + 2, using)
            if using is not None:
                for part in text(using + 1).split(","):
                    _, _, value = part.partition("=")
                    if value.strip() and not self.expression(value, facts, label):
                        facts.opaque.append(f"a RAISE option {label} does not parse")
        elif head in ("NULL", "GET", "FETCH", "MOVE", "CLOSE", "CONTINUE", "EXIT", "COMMIT", "ROLLBACK"):
            when = find(("WHEN",), i + 1)
            if head in ("EXIT", "CONTINUE") and when is not None:
                expr(when + 1)
            elif head in ("COMMIT", "ROLLBACK"):
                self.add_kind(facts, "transaction", self.label_detail(head, label))
        elif head == "OPEN":
            for_at = find(("FOR",), i + 1)
            if for_at is not None and for_at + 1 < len(toks):
                if toks[for_at + 1].upper == "EXECUTE":
                    self.dynamic(body, toks[for_at + 2 :], facts, label)
                else:
                    self.nested(text(for_at + 1), facts, label, on_fail="opaque")
        elif head == "ASSERT":
            expr(i + 1)
        elif nxt in (":=", "=") or (i + 2 < len(toks) and toks[i + 1].text in (".", "[")):
            at = find((":=", "="), i + 1)
            if at is None:
                facts.opaque.append(f"a statement {label} could not be read")
            else:
                expr(at + 1)
        else:
            self.plpgsql_sql(text(i), facts, label)
        return declaring

    def plpgsql_sql(self, text: str, facts: _Facts, label: str) -> None:
        """A SQL statement inside PL/pgSQL; `SELECT ... INTO var` assigns a variable there."""
        try:
            stmts = _parse_batch(text, "postgres")
        except _ParseFailure:
            facts.opaque.append(f"a statement {label} does not parse")
            return
        for stmt in stmts:
            if isinstance(stmt.ast, exp.Select) and stmt.ast.args.get("into"):
                stmt.ast.set("into", None)
            self.statement(stmt, facts, label)

    def dynamic(self, body: str, toks: list[_Tok], facts: _Facts, label: str) -> None:
        """EXECUTE <expr> [INTO ...] [USING ...]: resolvable only if <expr> is literal text."""
        end = next((k for k, t in enumerate(toks) if t.upper in ("INTO", "USING")), len(toks))
        parts = toks[:end]
        literal = []
        for k, t in enumerate(parts):
            if (k % 2 == 0 and t.kind == "str") or (k % 2 == 1 and t.text == "||"):
                if t.kind == "str":
                    literal.append(t.text)
                continue
            literal = None
            break
        if not parts or literal is None or len(parts) % 2 == 0:
            facts.opaque.append(f"EXECUTE of a dynamic expression {label}")
            return
        self.nested("".join(literal), facts, f"executed {label}", on_fail="opaque")

    # -- syntax trees -----------------------------------------------------------------------

    def tree(self, root: exp.Expr, facts: _Facts, label: str, *, count_root: bool) -> None:
        for node in root.walk():
            cls = type(node)
            kind = _CLASS_KIND.get(cls)
            if kind is None and cls is exp.Values and node is root:
                kind = "select"
            if kind is not None and (node is not root or count_root):
                self.node_kind(node, kind, root, facts, label)
            if cls is exp.Table:
                self.table_node(node, facts)
            elif isinstance(node, exp.Func):
                self.func_node(node, facts, label)
            elif cls is exp.Select:
                self.select_node(node, facts, label)
            elif cls in (exp.Update, exp.Delete):
                self.where_check(node, facts, label)
            elif cls is exp.TruncateTable:
                facts.where.append(self.label_detail("TRUNCATE removes every row", label))

    def node_kind(self, node: exp.Expr, kind: str, root: exp.Expr, facts: _Facts, label: str) -> None:
        word = kind.upper()
        if kind == "explain" and isinstance(node, exp.Describe):
            target = node.this
            if not isinstance(target, (exp.Query, exp.DML, exp.DDL, exp.Command)):
                kind, word = "show", "DESCRIBE"
            else:
                word = "EXPLAIN"
        if node is root:
            if _KEYWORD_KIND.get(self.lead.lower()) == kind and kind != "select":
                word = self.lead  # BEGIN, COMMIT, END, ANALYZE, ... as written
            detail = self.label_detail(word, label)
        else:
            where = "inside a WITH clause" if node.find_ancestor(exp.CTE) else "inside another statement"
            detail = f"{word} {where}" + (f" {label}" if label else "")
        write: bool | None = None
        if kind == "set":
            write = self.set_node(node)
        elif kind == "use":
            target = node.this
            name = target.name if isinstance(target, exp.Expr) else str(target or "")
            if name:
                self.current_db = name.lower()
                facts.schemas.append(_Ref(name, (name.lower(),)))
        elif kind == "pragma":
            write = not self.pragma_is_read(node, facts)
            if write:
                detail = f"PRAGMA {self.pragma_name(node)}"
        elif kind == "insert":
            conflict = node.args.get("conflict")
            upsert = conflict is not None and (
                conflict.args.get("expressions") or "UPDATE" in str(conflict.args.get("action") or "").upper()
            )
            if upsert:
                self.add_kind(facts, "update", detail.replace("INSERT", "INSERT ... UPDATE", 1))
            alternative = str(node.args.get("alternative") or "").upper()
            replacing = alternative == "REPLACE" or node.args.get("replace") or self.replacing
            if replacing:
                self.add_kind(facts, "delete", detail.replace("INSERT", "INSERT OR REPLACE", 1))
            if upsert or replacing:
                self.upsert_check(
                    node,
                    conflict if upsert else None,
                    facts,
                    label,
                    "REPLACE" if replacing and not upsert else "upsert",
                )
        elif kind == "merge":
            whens = node.args.get("whens")
            for when in whens.expressions if whens else []:
                then = when.args.get("then")
                if isinstance(then, exp.Var) and then.name.upper() == "DELETE":
                    self.add_kind(facts, "delete", f"DELETE inside MERGE{f' {label}' if label else ''}")
            self.merge_check(node, facts, label)
        elif kind == "create":
            self.create_body(node, facts)
        elif kind == "show" and isinstance(node, exp.Show):
            target, db = node.args.get("target"), node.args.get("db")
            names = [x.name for x in (db, target) if isinstance(x, exp.Expr) and x.name]
            if target is not None and names:
                self.table_ref(names, facts)
            elif names:
                facts.schemas.append(_Ref(names[-1], (names[-1].lower(),)))
        elif kind == "copy":
            files = " ".join(
                str(f.name if isinstance(f, exp.Expr) else f).upper() for f in node.args.get("files") or []
            )
            if "PROGRAM" in files:
                detail = self.label_detail("COPY ... PROGRAM", label)
        self.add_kind(facts, kind, detail, write=write)

    def set_node(self, node: exp.Set) -> bool:
        """Track search_path and MySQL user variables; user-variable assignments are not writes."""
        write = False
        for item in node.expressions:
            target = item.this if isinstance(item, exp.SetItem) else item
            if isinstance(target, (exp.EQ, exp.PropertyEQ)):
                left, right = target.this, target.expression
            else:
                left, right = target, None
            if self.dialect == "mysql" and isinstance(left, exp.Parameter) and not item.args.get("kind"):
                value = self.server_string(right)
                self.user_vars[left.name.lower()] = value
                continue
            write = True
            if (
                self.dialect == "postgres"
                and isinstance(left, (exp.Column, exp.Var))
                and left.name.lower() == "search_path"
            ):
                values = right.expressions if isinstance(right, exp.Tuple) else [right]
                names = [v.name.lower() for v in values if isinstance(v, exp.Expr) and v.name]
                self.add_search_path(names)
        return write

    @staticmethod
    def pragma_name(node: exp.Pragma) -> str:
        target = node.this
        left = target.this if isinstance(target, (exp.EQ, exp.PropertyEQ)) else target
        if isinstance(left, exp.Dot):
            left = left.expression
        return (left.name if isinstance(left, exp.Expr) else str(left or "")).lower()

    def pragma_is_read(self, node: exp.Pragma, facts: _Facts) -> bool:
        name = self.pragma_name(node)
        target = node.this
        has_value = isinstance(target, (exp.EQ, exp.PropertyEQ))
        if has_value and name in _PRAGMA_TABLE_ARG:
            value = target.expression
            if isinstance(value, exp.Expr) and value.name:
                self.table_ref([value.name], facts)
        if name in _PRAGMA_READ_WITH_ARG:
            return True
        return name in _PRAGMA_READ_NO_VALUE and not has_value

    def create_body(self, node: exp.Create, facts: _Facts) -> None:
        kind = str(node.args.get("kind") or "").upper()
        if kind not in ("FUNCTION", "PROCEDURE"):
            return
        body = node.args.get("expression")
        if isinstance(body, exp.Block) and any(isinstance(e, _STRING_NODES) for e in body.expressions):
            if len(body.expressions) != 1:
                facts.opaque.append(f"the body of CREATE {kind} has several parts and is not analyzed")
                return
            body = body.expressions[0]  # PROCEDURE ... AS '<body>' comes wrapped in a block
        if not isinstance(body, _STRING_NODES):
            return  # no body, or a SQL-standard body (RETURN ..., BEGIN ATOMIC): part of the tree walked
        language = "sql"
        props = node.args.get("properties")
        for prop in props.expressions if props else []:
            if isinstance(prop, exp.LanguageProperty):
                language = prop.name.lower()
        text = self.server_string(body)
        if text is None:
            facts.opaque.append(f"the body of CREATE {kind} cannot be read as the server would read it")
            return
        self.routine_body(text, language, facts, f"inside CREATE {kind}")

    def select_node(self, node: exp.Select, facts: _Facts, label: str) -> None:
        into = node.args.get("into")
        if into is not None:
            target = into.this
            is_var = isinstance(target, exp.Table) and isinstance(
                target.this, (exp.Parameter, exp.SessionParameter)
            )
            if not (self.dialect == "mysql" and is_var):
                self.add_kind(facts, "create", self.label_detail("SELECT ... INTO (creates a table)", label))
        if node.args.get("locks"):
            facts.writes.append(self.label_detail("SELECT ... FOR UPDATE/SHARE (takes row locks)", label))

    def merge_check(self, node: exp.Merge, facts: _Facts, label: str) -> None:
        """MERGE's UPDATE/DELETE actions change the target rows its ON (and WHEN ... AND) condition
        matches: judged like a WHERE, and the matched rows must be bounded by the source or by a
        restriction of the target to constants."""
        target = node.this
        targets = set()
        if isinstance(target, exp.Table):
            targets.add(target.name.lower())
            if target.alias:
                targets.add(target.alias.lower())
        on = node.args.get("on")
        whens = node.args.get("whens")
        for when in whens.expressions if whens else []:
            then = when.args.get("then")
            deleting = isinstance(then, exp.Var) and then.name.upper() == "DELETE"
            if not (when.args.get("matched") and (deleting or isinstance(then, exp.Update))):
                continue
            word = "MERGE ... DELETE" if deleting else "MERGE ... UPDATE"
            cond = on.copy() if isinstance(on, exp.Expr) else exp.true()
            if when.args.get("condition") is not None:
                cond = exp.and_(cond, when.args["condition"].copy())
            reason = _always_true(cond, targets, self.dialect)
            if not reason and not _mentions_target(cond, targets):
                reason = "does not restrict the target table"
            if (
                not reason
                and not _bounded_source(node.args.get("using"), self.dialect)
                and not _pins_target(cond, targets)
            ):
                reason = "matches every target row the source can name (the source is not bounded)"
            if reason:
                facts.where.append(self.label_detail(f"{word} with an ON condition that {reason}", label))

    def upsert_check(self, node: exp.Insert, conflict, facts: _Facts, label: str, word: str) -> None:
        """INSERT ... ON CONFLICT DO UPDATE / ON DUPLICATE KEY UPDATE / REPLACE change the existing
        rows the inserted rows collide with: bounded when the rows come from a VALUES list or a
        restricted query, or the DO UPDATE has a WHERE pinning the target."""
        source = node.args.get("expression")
        if _bounded_source(source, self.dialect):
            return
        where = conflict.args.get("where") if conflict is not None else None
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        targets = {target.name.lower()} if isinstance(target, exp.Table) else set()
        if isinstance(target, exp.Table) and target.alias:
            targets.add(target.alias.lower())
        if (
            where is not None
            and not _always_true(where.this, targets, self.dialect)
            and _pins_target(where.this, targets)
        ):
            return
        facts.where.append(
            self.label_detail(
                f"{word} of rows from an unrestricted query (can change every existing row)", label
            )
        )

    def where_check(self, node: exp.Expr, facts: _Facts, label: str) -> None:
        if isinstance(node.parent, exp.When):
            return  # a MERGE action: judged with the MERGE's ON condition (merge_check)
        word = "UPDATE" if isinstance(node, exp.Update) else "DELETE"
        where = node.args.get("where")
        if where is None:
            facts.where.append(self.label_detail(f"{word} without WHERE", label))
            return
        targets = set()
        for table in [node.this, *(node.args.get("tables") or [])]:
            if isinstance(table, exp.Table):
                targets.add(table.name.lower())
                if table.alias:
                    targets.add(table.alias.lower())
        reason = _always_true(where.this, targets, self.dialect)
        joined = (
            node.args.get("from_")
            or node.args.get("using")
            or any(
                isinstance(t, exp.Table) and t.args.get("joins")
                for t in [node.this, *(node.args.get("tables") or [])]
            )
        )
        # The tables written: MySQL's DELETE t1 FROM ... names them; otherwise the first table.
        written = {
            t.alias_or_name.lower() for t in (node.args.get("tables") or []) if isinstance(t, exp.Table)
        }
        if not written and isinstance(node.this, exp.Table):
            written = {node.this.name.lower(), node.this.alias_or_name.lower()}
        if not reason and joined and not _mentions_target(where.this, written or targets):
            # UPDATE t ... FROM o WHERE o.x = 1 / DELETE FROM t USING o / MySQL UPDATE t JOIN o ...
            # WHERE o.x = 1: every row of t that joins.
            reason = "does not restrict the table written"
        if reason:
            snippet = _generator(self.dialect).generate(where.this, copy=False)
            snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
            facts.where.append(self.label_detail(f"{word} with a WHERE that {reason}: {snippet}", label))

    # -- references -------------------------------------------------------------------------

    def table_node(self, node: exp.Table, facts: _Facts) -> None:
        this = node.this
        if this is not None and not isinstance(this, exp.Identifier):
            return  # a table function (seen as a function) or a variable
        parent = node.parent
        kind = str(parent.args.get("kind") or "").upper() if parent is not None else ""
        names = [p for p in (node.catalog, node.db, node.name) if p]
        if not names:
            return
        if isinstance(parent, (exp.Create, exp.Drop, exp.Grant, exp.Revoke)) and kind in (
            "SCHEMA",
            "DATABASE",
        ):
            facts.schemas.append(_Ref(names[-1], (names[-1].lower(),)))
            return
        if isinstance(parent, exp.UserDefinedFunction) or (
            isinstance(parent, exp.Drop) and kind in ("FUNCTION", "PROCEDURE")
        ):
            self.function_ref(names, facts)
            return
        if isinstance(parent, exp.Use):
            return  # handled as a schema reference in node_kind
        if not node.db and not _is_write_target(node) and self.is_cte(node):
            return
        self.table_ref(names, facts)

    def is_cte(self, node: exp.Table) -> bool:
        """Does this unqualified name refer to a CTE visible at this point (not a real table)?"""
        key = _ident_key(node.this, self.dialect)
        grandchild: exp.Expr | None = None
        child: exp.Expr = node
        parent = node.parent
        while parent is not None:
            with_ = parent.args.get("with_")
            if isinstance(with_, exp.With):
                ctes = with_.expressions
                names = [
                    _ident_key(c.args["alias"].this, self.dialect) if c.args.get("alias") else None
                    for c in ctes
                ]
                if child is with_:
                    # We came up through one of the CTEs: it sees the earlier ones (all, if recursive).
                    pos = next((k for k, c in enumerate(ctes) if c is grandchild), len(ctes))
                    visible = names if with_.args.get("recursive") else names[:pos]
                else:
                    visible = names
                if key in visible:
                    return True
            grandchild, child, parent = child, parent, parent.parent
        return False

    def table_ref(self, names: list[str], facts: _Facts) -> None:
        low = [n.lower() for n in names]
        display = ".".join(names)
        name = low[-1]
        cands = {name}
        schemas: list[str] = []
        if len(low) >= 2:
            cands.add(f"{low[-2]}.{name}")
            schemas.append(low[-2])
            if len(low) >= 3:
                cands.add(".".join(low[-3:]))
        else:
            defaults = (
                list(self.search_path)
                if self.dialect != "mysql"
                else ([self.current_db] if self.current_db else [])
            )
            if self.dialect == "postgres" and name.startswith("pg_"):
                defaults.append("pg_catalog")
            for schema in defaults:
                cands.add(f"{schema}.{name}")
                schemas.append(schema)
        facts.tables.append(_Ref(display, tuple(sorted(cands))))
        if schemas:
            facts.schemas.append(_Ref(display, tuple(schemas)))

    def function_ref(self, names: list[str], facts: _Facts) -> None:
        low = [n.lower() for n in names]
        cands = (low[-1], ".".join(low[-2:])) if len(low) >= 2 else (low[-1],)
        facts.functions.append(_Ref(".".join(names), cands))
        if len(low) >= 2:
            facts.schemas.append(_Ref(".".join(names), (low[-2],)))
        if _glob_any(self.denied, (low[-1],)):
            facts.writes.append(f"calls {low[-1]}() (side effects or server access)")
        for pattern, cls in self.side_effect_functions:
            if _glob_any((pattern,), (low[-1],)):
                facts.side_effects.append((cls, f"calls {low[-1]}() ({cls.replace('_', ' ')})"))
                break

    def func_node(self, node: exp.Func, facts: _Facts, label: str) -> None:
        if isinstance(node, (exp.Binary, exp.Connector, exp.Unary, exp.Not)):
            return  # operators sqlglot models as functions
        if isinstance(node, exp.Anonymous):
            name = node.name
            names = [name] if name else []
        else:
            names = [n.lower() for n in node.sql_names()]
            name = names[0] if names else node.key
        if not names:
            return
        parent = node.parent
        schema = None
        if isinstance(parent, exp.Dot) and parent.expression is node and isinstance(parent.this, exp.Expr):
            schema = parent.this.name  # schema.fn(...)
        elif isinstance(parent, exp.Table) and parent.this is node and parent.db:
            schema = parent.db  # FROM schema.fn(...)
        for n in names[:3]:
            self.function_ref([schema, n] if schema else [n], facts)
        lname = (name or "").lower()
        args = node.expressions if isinstance(node, exp.Anonymous) else [a for a in node.args.values() if a]
        chooser = self.sql_text_functions.get(lname)
        if chooser is not None:
            position = chooser(len(args))
            if position is not None:
                arg = args[position] if position < len(args) else None
                literal = self.server_string(arg)
                if literal is not None:
                    self.nested(literal, facts, f"inside {lname}()", on_fail="opaque")
                else:
                    facts.opaque.append(f"{lname}() runs SQL that is not a string literal")
        if lname == "set_config" and self.dialect == "postgres" and len(args) >= 2:
            setting, value = self.server_string(args[0]), self.server_string(args[1])
            if setting is None:
                facts.opaque.append("set_config() of a setting named by an expression")
            elif setting.strip().lower() == "search_path":
                if value is not None:
                    self.add_search_path(value.split(","))
                else:
                    facts.opaque.append("set_config() sets search_path to a computed value")
        reads = self.table_name_functions.get(lname)
        if reads is not None:
            arg = self.server_string(args[0]) if args else None
            if reads == "all":
                facts.opaque.append(f"{lname}() reads every table of the database")
            elif arg is None:
                facts.opaque.append(f"{lname}() reads a {reads} named by an expression")
            else:
                parts = _split_name(arg, self.dialect)
                if not parts:
                    facts.opaque.append(f"{lname}() reads a {reads} whose name cannot be read")
                elif reads == "table":
                    self.table_ref(parts, facts)
                else:
                    facts.schemas.append(_Ref(parts[-1], (parts[-1].lower(),)))


def _split_name(text: str, dialect: str) -> list[str]:
    """'billing."Invoices"' -> ['billing', 'Invoices'] (PostgreSQL folds unquoted parts)."""
    parts = []
    for m in re.finditer(
        r'\s*(?:"((?:[^"]|"")*)"|`((?:[^`]|``)*)`|\[([^\]]*)\]|([^."`\[\s]+))\s*(\.|$)', text
    ):
        quoted = next((g for g in m.group(1, 2, 3) if g is not None), None)
        parts.append(quoted if quoted is not None else m.group(4))
        if not m.group(5):
            break
    return parts if 1 <= len(parts) <= 3 and all(parts) else []


_SCAN_SKIP = frozenset(
    {
        "TABLE",
        "TABLES",
        "ONLY",
        "FULL",
        "VERBOSE",
        "FREEZE",
        "ANALYZE",
        "ANALYSE",
        "IN",
        "MODE",
        "NOWAIT",
        "SHARE",
        "EXCLUSIVE",
        "ACCESS",
        "ROW",
        "UPDATE",
        "READ",
        "WRITE",
        "LOCAL",
        "LOW_PRIORITY",
        "INDEX",
        "SCHEMA",
        "DATABASE",
        "SYSTEM",
        "MATERIALIZED",
        "VIEW",
        "CONCURRENTLY",
        "WITH",
        "DATA",
        "NO",
        "TO",
        "AS",
        "ON",
        "USING",
        "TRUE",
        "FALSE",
        "FUNCTION",
        "PROCEDURE",
        "RETURNS",
        "SETOF",
        "LANGUAGE",
        "TRIGGER",
        "EXTENSION",
        "RULE",
        "INSTEAD",
        "ALSO",
        "BEFORE",
        "AFTER",
        "EACH",
        "STATEMENT",
        "EXECUTE",
        "OR",
        "REPLACE",
        "IF",
        "EXISTS",
        "NOT",
        "CASCADE",
        "RESTRICT",
        "ROLE",
        "USER",
        "SESSION",
        "AUTHORIZATION",
        "TEMP",
        "TEMPORARY",
        "UNLOGGED",
        "SECURITY",
        "DEFINER",
        "INVOKER",
        "IMMUTABLE",
        "STABLE",
        "VOLATILE",
        "STRICT",
        "PARALLEL",
        "SAFE",
        "COST",
        "ROWS",
        "DO",
        "NOTHING",
        "SELECT",
        "INSERT",
        "DELETE",
        "FROM",
        "WHERE",
        "AND",
        "INTO",
        "VALUES",
        "BEGIN",
        "END",
        "FOR",
        "OF",
        "NEW",
        "OLD",
        "REFERENCING",
        "WHEN",
        "THEN",
        "SET",
        "DEFAULT",
        "ALL",
        "PRIVILEGES",
        "PUBLIC",
    }
)


def _text_from(stmt: _Stmt, tok: _Tok) -> str:
    """Statement text from `tok` to the end of the statement."""
    return stmt.text[tok.start - stmt.base :]


_WRITE_TARGET_PARENTS = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.DDL, exp.TruncateTable, exp.Copy)


def _is_write_target(node: exp.Table) -> bool:
    """The table an INSERT/UPDATE/DELETE/MERGE/DDL statement writes: servers never resolve it to
    a CTE of the same name, so `WITH t AS (...) DELETE FROM t` deletes from the real table t."""
    parent, key = node.parent, node.arg_key
    if isinstance(parent, exp.Schema):  # INSERT INTO t (cols)
        parent, key = parent.parent, parent.arg_key
    return isinstance(parent, _WRITE_TARGET_PARENTS) and key in ("this", "tables", "expressions")


def _column_owner(col: exp.Column) -> str | None:
    return col.table.lower() if col.table else None


def _mentions_target(cond: exp.Expr, targets: set[str]) -> bool:
    """Does the condition use a column of the written table (qualified by its name or alias, or
    unqualified, which may be it)?"""
    return any(_column_owner(c) in targets or _column_owner(c) is None for c in cond.find_all(exp.Column))


_PREDICATES = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Is,
)


def _pins_target(cond: exp.Expr, targets: set[str]) -> bool:
    """Some predicate compares a target column with constants only (t.id = 5, t.id IN (1, 2))."""
    for pred in cond.find_all(*_PREDICATES):
        cols = list(pred.find_all(exp.Column))
        if cols and all(
            _column_owner(c) in targets or (_column_owner(c) is None and len(targets) > 0) for c in cols
        ):
            if not any(isinstance(x, (exp.Select, exp.Subquery)) for x in pred.walk()):
                if len({c.name.lower() for c in cols}) == 1 and len(cols) == 1:
                    return True
    return False


def _bounded_source(source, dialect: str) -> bool:
    """Rows that are spelled out (VALUES, SELECT of constants) or come from a restricted query."""
    while isinstance(source, (exp.Subquery, exp.Paren)):
        source = source.this
    if isinstance(source, exp.Values):
        return True
    if isinstance(source, exp.Select):
        if source.args.get("limit") is not None and isinstance(source.args["limit"].expression, exp.Literal):
            return True
        if not source.args.get("from_"):
            return True
        where = source.args.get("where")
        if where is not None and not _always_true(where.this, set(), dialect):
            tables = {t.alias_or_name.lower() for t in source.find_all(exp.Table)}
            return _pins_target(where.this, tables)
    return False


def _skip_parens(toks: list[_Tok], i: int) -> int:
    depth = 0
    while i < len(toks):
        depth += toks[i].text == "("
        depth -= toks[i].text == ")"
        i += 1
        if depth == 0:
            break
    return i


def _ident_key(ident, dialect: str) -> str | None:
    if not isinstance(ident, exp.Identifier):
        return None
    if dialect == "postgres" and not ident.quoted:
        return ident.name.lower()
    return ident.name


# -- require_where --------------------------------------------------------------------------------


_SIMPLIFY_MAX_NODES = 300  # sqlglot's simplifier is quadratic on long AND/OR chains


def _simplified(e: exp.Expr, dialect: str) -> exp.Expr:
    try:
        return simplify(e.copy(), dialect=dialect)
    except Exception:  # the simplifier is best effort; fall back to the raw expression
        return e


def _fold(e: exp.Expr, dialect: str) -> exp.Expr:
    """Constant-fold a condition: whole if small, else each constant AND/OR operand on its own."""
    if sum(1 for _ in zip(e.walk(), range(_SIMPLIFY_MAX_NODES + 1), strict=False)) <= _SIMPLIFY_MAX_NODES:
        return _simplified(e, dialect)
    return _fold_operands(e, dialect)


def _fold_operands(e: exp.Expr, dialect: str) -> exp.Expr:
    e = _unparen(e)
    if isinstance(e, exp.Connector):
        operands = [_fold_operands(op, dialect) for op in e.flatten()]
        return (exp.or_ if isinstance(e, exp.Or) else exp.and_)(*operands, copy=False, wrap=False)
    if e.find(exp.Column) is None:
        return _simplified(e, dialect)  # a constant operand: fold it (1=1, 'a'='a', NOT FALSE)
    return e


def _always_true(cond: exp.Expr, targets: set[str], dialect: str) -> str | None:
    return _taut(_fold(cond, dialect), targets, dialect)


def _unparen(e: exp.Expr) -> exp.Expr:
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def _const_false(e: exp.Expr) -> bool:
    e = _unparen(e)
    if isinstance(e, exp.Boolean):
        return not e.this
    if isinstance(e, exp.Null):
        return True
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this.strip().lower() in ("", "0", "f", "false", "n", "no", "off")
        try:
            return float(e.this) == 0
        except ValueError:
            return False
    if isinstance(e, exp.Not) and isinstance(_unparen(e.this), exp.Boolean):
        return bool(_unparen(e.this).this)
    return False


def _canon(e: exp.Expr, targets: set[str], dialect: str) -> str:
    """SQL text of `e` with the target table's own qualifier dropped (t.id and id are the same)."""
    if any(col.table and col.table.lower() in targets for col in e.find_all(exp.Column)):
        e = e.copy()
        for col in e.find_all(exp.Column):
            if col.table and col.table.lower() in targets:
                col.set("table", None)
    return _generator(dialect).generate(e, copy=False).lower()


def _generator(dialect: str):
    cache = getattr(_local, "generators", None)
    if cache is None:
        cache = _local.generators = {}
    gen = cache.get(dialect)
    if gen is None:
        gen = cache[dialect] = Dialect.get_or_raise(dialect).generator()
    return gen


def _taut(e: exp.Expr, targets: set[str], dialect: str) -> str | None:
    e = _unparen(e)
    if isinstance(e, exp.Boolean):
        return "is always true" if e.this else None
    if _const_false(e):
        return None
    if not any(True for _ in e.find_all(exp.Column)):
        return "refers to no column"
    if isinstance(e, exp.Or):
        branches = list(e.flatten())
        for branch in branches:
            reason = _taut(branch, targets, dialect)
            if reason:
                return reason
        polarity: dict[str, set[bool]] = {}
        for branch in branches:
            key, positive = _polar(branch, targets, dialect)
            polarity.setdefault(key, set()).add(positive)
            if len(polarity[key]) == 2:
                return "holds a condition and its negation"
        return None
    if isinstance(e, exp.And):
        reasons = [_taut(b, targets, dialect) for b in e.flatten()]
        return reasons[0] if all(reasons) else None
    if isinstance(e, (exp.EQ, exp.NullSafeEQ, exp.GTE, exp.LTE, exp.Like, exp.ILike)):
        left, right = e.this, e.expression
        if isinstance(e, (exp.Like, exp.ILike)) and isinstance(right, exp.Literal) and right.is_string:
            if right.this and set(right.this) == {"%"}:
                return "matches every value (LIKE '%')"
        if (
            left is not None
            and right is not None
            and _canon(left, targets, dialect) == _canon(right, targets, dialect)
        ):
            return "compares an expression with itself"
    if isinstance(e, exp.Is) and isinstance(e.expression, exp.Boolean) and e.expression.this:
        return _taut(e.this, targets, dialect)
    return None


def _polar(e: exp.Expr, targets: set[str], dialect: str) -> tuple[str, bool]:
    e = _unparen(e)
    positive = True
    while isinstance(e, exp.Not):
        positive = not positive
        e = _unparen(e.this)
    c = lambda x: _canon(x, targets, dialect)  # noqa: E731
    if isinstance(e, (exp.EQ, exp.NEQ)):
        a, b = sorted((c(e.this), c(e.expression)))
        return f"eq:{a}|{b}", positive if isinstance(e, exp.EQ) else not positive
    if isinstance(e, (exp.GT, exp.LTE)):
        return f"gt:{c(e.this)}|{c(e.expression)}", positive if isinstance(e, exp.GT) else not positive
    if isinstance(e, (exp.LT, exp.GTE)):
        return f"gt:{c(e.expression)}|{c(e.this)}", positive if isinstance(e, exp.LT) else not positive
    if isinstance(e, exp.Is) and isinstance(e.expression, exp.Null):
        return f"null:{c(e.this)}", positive != bool(e.args.get("negate"))
    return c(e), positive


def _analyze(text: str, dialect: str) -> _Analysis:
    return _Analyzer(dialect).run(text)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _has_sql(sql: dict) -> bool:
    return bool(sql) and any(sql.get(key) not in (None, False, [], "") for key in SQL_CONDITIONS)


def _sql_findings(rule: Rule, sql: dict, analysis: _Analysis, dialect: str) -> list[Finding]:
    out: list[Finding] = []

    def add(condition: str, statement: int | None, detail: str) -> None:
        out.append(Finding(rule.name, "input", f"sql.{condition}", statement, detail))

    if analysis.error is not None:
        add("parse_error", None, f"does not parse as {dialect} SQL: {analysis.error}")
        return out
    if sql.get("single_statement") and len(analysis.statements) > 1:
        add("single_statement", 2, f"{len(analysis.statements)} statements in one input; one is allowed")
    denied_kinds = set(sql.get("deny_statements") or ())
    opaque_applies = any(sql.get(key) not in (None, False, []) for key in _OPAQUE_SENSITIVE)
    allowed_effects = set(sql.get("allow_side_effects") or ())
    ceiling = sql.get("max_affected_rows")
    for st in analysis.statements:
        i = st.index
        for kind, detail in st.kinds.items():
            if kind in denied_kinds:
                add("deny_statements", i, detail)
        if sql.get("require_where"):
            for detail in st.where:
                add("require_where", i, detail)
        if sql.get("read_only"):
            for detail in st.writes:
                add("read_only", i, detail)
        if sql.get("deny_tables"):
            for ref in st.tables:
                hit = next((c for c in ref.candidates if _glob_any(sql["deny_tables"], (c,))), None)
                if hit is not None:
                    add(
                        "deny_tables",
                        i,
                        ref.display if hit == ref.display.lower() else f"{ref.display} ({hit})",
                    )
        if sql.get("deny_schemas"):
            for ref in st.schemas:
                hit = next((c for c in ref.candidates if _glob_any(sql["deny_schemas"], (c,))), None)
                if hit is not None:
                    add("deny_schemas", i, hit if hit == ref.display.lower() else f"{hit} ({ref.display})")
        if sql.get("deny_functions"):
            for ref in st.functions:
                if _glob_any(sql["deny_functions"], ref.candidates):
                    add("deny_functions", i, ref.display)
        if opaque_applies:
            for detail in st.opaque:
                add("opaque", i, detail)
        for cls, detail in st.side_effects:
            if cls not in allowed_effects:
                add("side_effects", i, f"{detail} [{cls}]")
        if ceiling is not None:
            for kind, detail in st.kinds.items():
                if kind not in CEILING_KINDS:
                    add(
                        "max_affected_rows",
                        i,
                        f"{detail}: cannot run under an affected-rows ceiling (it would commit, end or "
                        "escape the transaction the count is taken in)",
                    )
    return out


# Databases every MySQL connection may name: metadata views (names only, never other data).
_MYSQL_SHARED_DATABASES = frozenset({"information_schema"})


def databases_named(text: str, dialect: str) -> set[str] | None:
    """The databases a MySQL input names outside its connection's default: `db.table`,
    `db.fn()`, `USE db`, `SHOW TABLES FROM db`. None when that cannot be told with certainty (the
    caller then refuses). Other dialects: PostgreSQL cannot name another database in a query, so
    the answer is always the empty set."""
    if dialect != "mysql":
        return set()
    names: set[str] = set()
    try:
        stmts = _parse_batch(text, dialect)
    except _ParseFailure:
        return None
    for stmt in stmts:
        toks = stmt.toks
        if stmt.ast is None or isinstance(stmt.ast, exp.Command):
            # Not parsed: a dotted name could be db.table or alias.column; refuse to guess.
            if any(t.text == "." for t in toks) or (toks and toks[0].upper in ("USE", "SHOW")):
                return None
            continue
        for table in stmt.ast.find_all(exp.Table):
            if table.args.get("catalog") is not None:
                return None
            if table.db:
                names.add(table.db.lower())
        for node in stmt.ast.find_all(exp.Use, exp.Show):
            target = node.this if isinstance(node, exp.Use) else node.args.get("db")
            if isinstance(target, exp.Expr) and target.name:
                names.add(target.name.lower())
        for dot in stmt.ast.find_all(exp.Dot):
            if isinstance(dot.expression, exp.Func) and isinstance(dot.this, exp.Expr) and dot.this.name:
                names.add(dot.this.name.lower())
        for col in stmt.ast.find_all(exp.Column):
            if col.args.get("catalog") is not None:
                names.add(col.catalog.lower())  # db.table.column
    return names - _MYSQL_SHARED_DATABASES


def affected_rows_ceiling(rules: list[Rule]) -> tuple[int, str] | None:
    """The smallest `max_affected_rows` of the rules and the rule that sets it, or None."""
    best = None
    for rule in rules:
        value = ((rule.input or {}).get("sql") or {}).get("max_affected_rows")
        if value is not None and (best is None or value < best[0]):
            best = (value, rule.name)
    return best


class _Views:
    """Lazily computed normalized views of one text."""

    def __init__(self, text: str, *, shell: bool):
        self.text = text
        self.shell = shell
        self._words: list[str] | None = None
        self._regex: list[tuple[str, str]] | None = None

    def word_views(self) -> list[str]:
        if self._words is None:
            norm = _normalize(self.text)
            views = [norm]
            if "/*" in norm:
                views.append(_strip_block_comments(norm))
            if self.shell and any(ch in norm for ch in "'\"\\"):
                views.append(norm.translate(_SHELL_QUOTES))
            self._words = views
        return self._words

    def regex_views(self) -> list[tuple[str, str]]:
        if self._regex is None:
            views = [("", self.text)]
            norm = _normalize_keep_case(self.text)
            if norm != self.text:
                views.append(("normalized ", norm))
            self._regex = views
        return self._regex


def _word_findings(rule: Rule, direction: str, words: list[str], views: _Views) -> list[Finding]:
    if not words:
        return []
    norm_words = tuple(_dedup(" ".join(_normalize(w).split()) for w in words if w and w.strip()))
    if not norm_words:
        return []
    pattern = _compile_words(norm_words)
    seen: set[str] = set()
    out = []
    for view in views.word_views():
        for m in pattern.finditer(view):
            word = " ".join(m.group().split())
            if word in seen:
                continue
            seen.add(word)
            out.append(
                Finding(
                    rule.name,
                    direction,
                    "deny_words",
                    None,
                    f"denied word {word!r} at line {_line_of(view, m.start())}",
                )
            )
    return out


def _regex_findings(rule: Rule, direction: str, patterns: list[str], views: _Views) -> list[Finding]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            compiled = _compile_regex(pattern)
        except re.error:
            out.append(
                Finding(
                    rule.name, direction, "regex", None, f"regex[{i}] could not be compiled; failing closed"
                )
            )
            continue
        for prefix, view in views.regex_views():
            m = compiled.search(view)
            if m is not None:
                out.append(
                    Finding(
                        rule.name,
                        direction,
                        "regex",
                        None,
                        f"regex[{i}] matched the {prefix}text at line {_line_of(view, m.start())}",
                    )
                )
                break
    return out


def evaluate_input(rules: list[Rule], text: str, *, dialect: str | None, assess_risk=None) -> list[Finding]:
    """All findings of all rules for an input. `dialect` is a sqlglot dialect name, or None for
    command connections (SQL conditions do not apply there; deny_words and regex do).

    `assess_risk()` returns the built-in analyzer's verdict on the input ({"risk_level", "title"});
    it is called at most once, and only when a rule has `risk_at_least`. Without it such a rule
    blocks (fail closed): this module cannot rate risk by itself."""
    if dialect is not None and dialect not in DIALECTS.values():
        raise InvalidInput(
            f"unknown SQL dialect {dialect!r}; use one of: {', '.join(sorted(set(DIALECTS.values())))}"
        )
    if not isinstance(text, str):
        raise InvalidInput("input must be a string")
    findings: list[Finding] = []
    analysis: _Analysis | None = None
    verdict: dict | None = None
    views = _Views(text, shell=dialect is None)
    for rule in rules:
        conds = rule.input or {}
        sql = conds.get("sql") or {}
        if dialect is not None and _has_sql(sql):
            if analysis is None:
                analysis = _analyze(text, dialect)
            findings.extend(_sql_findings(rule, sql, analysis, dialect))
        findings.extend(_word_findings(rule, "input", conds.get("deny_words") or [], views))
        findings.extend(_regex_findings(rule, "input", conds.get("regex") or [], views))
        if conds.get("risk_at_least"):
            if verdict is None:
                verdict = assess_risk() if assess_risk is not None else {}
            level = verdict.get("risk_level")
            if level not in RISK_LEVELS:
                findings.append(
                    Finding(rule.name, "input", "risk.at_least", None, "the risk could not be assessed")
                )
            elif RISK_LEVELS.index(level) >= RISK_LEVELS.index(conds["risk_at_least"]):
                detail = f"rated {level} by the analyzer: {verdict.get('title', '')}".rstrip(": ")
                findings.append(Finding(rule.name, "input", "risk.at_least", None, detail))
    return _dedup(findings)


def evaluate_output(rules: list[Rule], text: str) -> list[Finding]:
    """Findings of output conditions on a rendered result text."""
    if not isinstance(text, str):
        raise InvalidInput("output must be a string")
    findings: list[Finding] = []
    views = _Views(text, shell=False)
    secrets: list[str] | None = None
    for rule in rules:
        conds = rule.output or {}
        findings.extend(_word_findings(rule, "output", conds.get("deny_words") or [], views))
        findings.extend(_regex_findings(rule, "output", conds.get("regex") or [], views))
        if conds.get("secrets"):
            if secrets is None:
                secrets = find_secrets(text)
            findings.extend(Finding(rule.name, "output", "secrets", None, d) for d in secrets)
    return _dedup(findings)


def requires_read_only(rules: list[Rule]) -> bool:
    """True if any rule has sql.read_only, so the pipeline also runs the statement read-only."""
    return any(bool(((rule.input or {}).get("sql") or {}).get("read_only")) for rule in rules)


# ---------------------------------------------------------------------------------------------
# Secret detectors (output)
# ---------------------------------------------------------------------------------------------

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Z0-9])")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")),
    (
        "GitHub token",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?![A-Za-z0-9_])"
        ),
    ),
    ("Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[0-9A-Za-z]{6,}(?:-[0-9A-Za-z]{4,}){1,4}")),
    ("JWT", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")),
    ("Stripe live key", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_live_[0-9A-Za-z]{16,}")),
    ("Google API key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])")),
)
_URL_CREDENTIALS = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@'\"<>]{1,128}:([^\s@/'\"<>]{1,256})@[^\s/@]"
)
_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z0-9])(password|passwd|passphrase|secret|client[_-]?secret|secret[_-]?key|"
    r"(?:aws_)?secret_access_key|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|private[_-]?key)"
    r"[\"']?[ \t]*[:=][ \t]*([\"']?)([^\s\"',;&]{4,200})"
)
_PLACEHOLDERS = frozenset(
    {
        "null",
        "none",
        "nil",
        "true",
        "false",
        "undefined",
        "empty",
        "redacted",
        "hidden",
        "masked",
        "removed",
        "secret",
        "password",
        "required",
        "optional",
        "string",
        "text",
        "varchar",
        "example",
        "changeit",
        "your_password",
        "yourpassword",
        "your-password",
        "<password>",
        "xxxx",
    }
)
_MASK_CHARS = set("*xX•#.-_?●")


def _is_placeholder(value: str) -> bool:
    v = value.strip().strip("\"'").rstrip(".)]}")
    low = v.lower()
    if low in _PLACEHOLDERS or len(v) < 4:
        return True
    if set(v) <= _MASK_CHARS or len(set(v)) == 1:
        return True
    if v[0] in "$%{<[(@:?" or v.startswith("{{") or "${" in v:
        return True
    if low.startswith(("redacted", "<redacted", "[redacted", "env:", "vault:", "secret:")):
        return True
    return False


def find_secrets(text: str) -> list[str]:
    """Details (kind and line, never the value) of secret-looking values in `text`."""
    found: list[str] = []
    for label, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            if label == "AWS access key id" and m.group().endswith("EXAMPLE"):
                continue
            found.append(f"{label} at line {_line_of(text, m.start())}")
            break
    for m in _URL_CREDENTIALS.finditer(text):
        if not _is_placeholder(m.group(1)):
            found.append(f"password in a URL at line {_line_of(text, m.start())}")
            break
    for m in _ASSIGNMENT.finditer(text):
        if not _is_placeholder(m.group(3)):
            found.append(f"{m.group(1).lower()} assignment at line {_line_of(text, m.start())}")
            break
    return found
