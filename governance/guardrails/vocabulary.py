"""The guardrail vocabulary: dialects, statement kinds, conditions and their limits, and the tables
of keywords, functions and pragmas the analysis classifies statements by."""

from __future__ import annotations

from sqlglot import exp

from gateway.kinds import SQL_DIALECTS

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
