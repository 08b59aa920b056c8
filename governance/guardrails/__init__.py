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
    ``ＤＲＯＰ``, ``dr\u200bop`` and ``DRОP`` with a Cyrillic O; it does not match ``dropbox``
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
    evasions other than quotes and backslashes (variables, globbing, ``$'\x72m'``) are not
    decoded.
  * The regex guard rejects patterns over 1000 characters, nested unbounded quantifiers such as
    ``(a+)+`` and patterns that match the empty string; other super-linear patterns (e.g.
    overlapping alternatives inside a repeat, ``(a|a)*``) are not detected.
  * This module logs nothing; it filters sqlglot's "falling back to parsing as a Command"
    warning, which it handles itself.

Layout (a package by stage; other packages import only the public names re-exported here):
`vocabulary` (dialects, statement kinds, limits), `model` (`Rule`, `Finding`), `normalize` (text
for deny_words and regex), `conditions` (`validate_conditions`, compiled patterns), `lexer` (the
dialect-faithful lexer), `parser` (sqlglot, checked against the lexer), `analysis` (the facts per
statement), `secrets` (`find_secrets`), `evaluation` (`evaluate_input`, `evaluate_output`, ...).
"""

from __future__ import annotations

from governance.guardrails.conditions import validate_conditions  # noqa: F401
from governance.guardrails.evaluation import (  # noqa: F401
    affected_rows_ceiling,
    databases_named,
    evaluate_input,
    evaluate_output,
    requires_read_only,
)
from governance.guardrails.model import Finding, Rule  # noqa: F401
from governance.guardrails.secrets import find_secrets  # noqa: F401
from governance.guardrails.vocabulary import (  # noqa: F401
    CEILING_KINDS,
    DIALECTS,
    INPUT_CONDITIONS,
    MAX_AFFECTED_ROWS_LIMIT,
    MAX_ITEM_CHARS,
    MAX_LIST_ITEMS,
    MAX_REGEX_CHARS,
    MAX_SQL_CHARS,
    MAX_STATEMENTS,
    OUTPUT_CONDITIONS,
    READ_ONLY_DENIED_FUNCTIONS,
    RISK_LEVELS,
    SIDE_EFFECT_FUNCTIONS,
    SIDE_EFFECTS,
    SQL_CONDITIONS,
    STATEMENT_KINDS,
)

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
