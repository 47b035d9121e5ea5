"""Audit log entries and the query language over them (``spec/platform.md`` §9). Pure.

Three things live here, all without I/O so they can be tested as tables:

* **Building entries** for one frontend call outcome (§9.1): the time, the
  client address as 16 bytes, the user rendering and the outcome message.
* **The query language** of QueryAuditLogs (§9.2), a re-implementation of the
  parts of Tantivy's query parser that matter for two text fields tokenised by
  Tantivy's default tokenizer. The grammar is documented on :func:`parse_query`.
* **Ordering** of results: newest first at one-second granularity, insertion
  order within a second, at most ``limit`` entries (:func:`search`).

Every error is an :class:`AuditError`, whose text is the one Appendix B fixes:
``audit log error, reason: <why>`` (gRPC UNKNOWN).
"""

from __future__ import annotations

import heapq
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import grpc

from ..errors import KettleError
from ..rpc.generated.teaclave_common_pb2 import Entry
from .users import Role

__all__ = [
    "DEFAULT_FIELD",
    "FIELDS",
    "IP_LENGTH",
    "MICROSECONDS_PER_SECOND",
    "UNKNOWN_IP",
    "AuditError",
    "BooleanQuery",
    "ExistsQuery",
    "IndexedEntry",
    "MatchAll",
    "MatchNone",
    "Occur",
    "Query",
    "ResultQuery",
    "TermQuery",
    "access_denied_message",
    "authentication_failed_message",
    "check_limit",
    "entry_for_call",
    "ip_from_peer",
    "management_error_message",
    "now_microseconds",
    "parse_query",
    "render_user",
    "search",
    "status_text",
    "success_message",
    "tokenize",
    "validate_entry",
]


class AuditError(KettleError):
    """Any audit-log failure; the client sees ``audit log error, reason: <reason>`` (UNKNOWN)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"audit log error, reason: {reason}")
        self.reason = reason


# --- building entries (§9.1) --------------------------------------------------

IP_LENGTH = 16
UNKNOWN_IP = bytes(IP_LENGTH)
"""Teaclave's ``Ipv6Addr::UNSPECIFIED``: the address of a peer we cannot name."""
MICROSECONDS_PER_SECOND = 1_000_000


def now_microseconds() -> int:
    """Wall-clock time in microseconds since the Unix epoch (the Entry's ``microsecond``)."""
    return time.time_ns() // 1_000


def ip_from_peer(peer: str | None) -> bytes:
    """The 16-byte client address of a gRPC peer string (``context.peer()``).

    gRPC core writes ``ipv4:127.0.0.1:5555`` and ``ipv6:[::1]:5555`` (newer
    releases percent-encode the brackets: ``ipv6:%5B::1%5D:5555``). Like
    Teaclave (``Ipv4Addr::to_ipv6_compatible``), an IPv4 address becomes the
    IPv4-*compatible* IPv6 address ``::a.b.c.d`` (twelve zero bytes, then the
    four), not the IPv4-mapped ``::ffff:a.b.c.d``; an IPv6 address is kept as
    it is (a zone id is dropped, as ``Ipv6Addr`` has none). Anything else
    (``unix:``, a malformed string, no peer) is all zeros: a missing address
    must never fail the call it describes.
    """
    if not peer:
        return UNKNOWN_IP
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    try:
        if scheme == "ipv4":
            host = rest.rsplit(":", 1)[0]
            return bytes(12) + ipaddress.IPv4Address(host).packed
        if scheme == "ipv6":
            if rest.startswith("["):
                host = rest[1:].split("]", 1)[0]
            else:  # no port: the whole remainder is the address
                host = rest
            return ipaddress.IPv6Address(host.split("%", 1)[0]).packed
    except ValueError:
        pass
    return UNKNOWN_IP


def render_user(user_id: str, role: str) -> str:
    """``{ user: <id>, role: <role> }`` with the role in Teaclave's Debug form (§9.1).

    ``role`` is the role string of the caller's token (``DataOwner-x``); it is
    rendered ``DataOwner("x")``, ``PlatformAdmin``, … by :attr:`Role.audit_text`.
    The id is written as it is (unquoted), as the spec shows it.
    """
    return f"{{ user: {user_id}, role: {Role.parse(role).audit_text} }}"


def _tonic_code_name(code: grpc.StatusCode) -> str:
    """``PERMISSION_DENIED`` → ``PermissionDenied``: tonic's ``Code`` variant names."""
    return "".join(part.capitalize() for part in code.name.split("_"))


_RUST_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _rust_debug_str(text: str) -> str:
    """A string as Rust's ``{:?}`` writes it (quoted, escaped)."""
    body = "".join(
        _RUST_ESCAPES.get(ch) or (ch if ch.isprintable() else f"\\u{{{ord(ch):x}}}") for ch in text
    )
    return f'"{body}"'


def status_text(code: grpc.StatusCode, details: str | None) -> str:
    """The textual rendering of a management error status in an audit message.

    Teaclave appends the tonic ``Status`` it got from management as text. Kettle
    writes exactly what tonic's ``Display`` gives for a status built with
    ``Status::new(code, message)`` — which is how Teaclave's management creates
    its errors::

        status: PermissionDenied, message: "permission denied", details: [], metadata: MetadataMap { headers: {} }

    Teaclave's client-side status would also list the HTTP/2 response headers
    (``date``, ``content-type``, …) under ``metadata``; those are transport noise
    that differ per call, so Kettle renders the metadata as the empty map
    management created rather than invent headers. Code names are tonic's
    (``InvalidArgument``, ``Unknown``, …); the message is Rust-Debug quoted, so
    any text a service puts in an error stays on one line and unambiguous.
    """
    return (
        f"status: {_tonic_code_name(code)}, message: {_rust_debug_str(details or '')}, "
        "details: [], metadata: MetadataMap { headers: {} }"
    )


def success_message(policy: str) -> str:
    """A call management answered: the policy name alone, e.g. ``register_function``."""
    return policy


def management_error_message(policy: str, code: grpc.StatusCode, details: str | None) -> str:
    """A call management refused: ``<policy>:<status text>`` (no space after the colon, as in §9.1)."""
    return f"{policy}:{status_text(code, details)}"


def authentication_failed_message(policy: str) -> str:
    """Missing or wrong credentials (the user field stays empty)."""
    return f"authenticate to {policy}: authentication failed"


def access_denied_message(policy: str) -> str:
    """The access-control gate said no (the user field stays empty, as in Teaclave)."""
    return f"authenticate to {policy}"


def entry_for_call(
    peer: str | None,
    user: tuple[str, str] | None,
    message: str,
    result: bool,
    *,
    microsecond: int | None = None,
) -> Entry:
    """The audit entry for one frontend call outcome.

    ``user`` is ``(user id, role string)`` once the caller is authenticated and
    authorised, ``None`` otherwise (§9.1 leaves the field empty for those
    failures). ``message`` comes from one of the ``*_message`` helpers.
    ``microsecond`` defaults to now; tests pass a fixed time.
    """
    return Entry(
        microsecond=now_microseconds() if microsecond is None else microsecond,
        ip=ip_from_peer(peer),
        user="" if user is None else render_user(*user),
        message=message,
        result=result,
    )


def validate_entry(entry: Entry, index: int = 0) -> None:
    """Refuse an entry SaveLogs must not store (Appendix A.1: ``ip`` is exactly 16 bytes)."""
    if len(entry.ip) != IP_LENGTH:
        raise AuditError(f"entry {index}: ip must be {IP_LENGTH} bytes, got {len(entry.ip)}")


# --- tokenising (Tantivy's default tokenizer, minus its long-token filter) ------

_TOKEN = re.compile(r"[^\W_]+")  # runs of characters for which str.isalnum() holds


def tokenize(text: str) -> list[str]:
    """Split on every non-alphanumeric character and lower-case (§9.2).

    This is Tantivy's ``SimpleTokenizer`` + ``LowerCaser``. Tantivy's default
    analyser also drops tokens of 40 bytes or more (``RemoveLongFilter``);
    Kettle keeps them, so a long user id stays searchable — queries only ever
    match more, never differently, than in Teaclave.
    """
    return [token.lower() for token in _TOKEN.findall(text)]


# --- documents: an entry prepared for matching ---------------------------------

FIELDS = ("user", "message")
"""The text fields a query can name. ``result:true|false`` is accepted too (see parse_query)."""
DEFAULT_FIELD = "message"


@dataclass(frozen=True)
class IndexedEntry:
    """An entry with its fields tokenised once, so queries never re-tokenise it.

    The management service caches these; ``entry`` must not be mutated.
    """

    entry: Entry
    tokens: Mapping[str, tuple[str, ...]]
    token_sets: Mapping[str, frozenset[str]]
    second: int
    """The one-second timestamp Teaclave sorts on (its Tantivy date field keeps seconds)."""

    @classmethod
    def of(cls, entry: Entry) -> IndexedEntry:
        tokens = {"user": tuple(tokenize(entry.user)), "message": tuple(tokenize(entry.message))}
        return cls(
            entry=entry,
            tokens=tokens,
            token_sets={name: frozenset(values) for name, values in tokens.items()},
            second=entry.microsecond // MICROSECONDS_PER_SECOND,
        )


# --- the query tree -------------------------------------------------------------


class Occur(Enum):
    """How a clause of a boolean query counts (Tantivy/Lucene ``Occur``)."""

    MUST = "+"
    SHOULD = ""
    MUST_NOT = "-"


class Query:
    """A parsed query: a predicate over indexed entries."""

    def matches(self, doc: IndexedEntry) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class MatchAll(Query):
    """``*``: every entry."""

    def matches(self, doc: IndexedEntry) -> bool:
        return True


@dataclass(frozen=True)
class MatchNone(Query):
    """The empty query (Tantivy's ``EmptyQuery``), or a term with no tokens (e.g. ``user:__``)."""

    def matches(self, doc: IndexedEntry) -> bool:
        return False


@dataclass(frozen=True)
class TermQuery(Query):
    """One token, or a phrase of consecutive tokens, in one text field."""

    field: str
    tokens: tuple[str, ...]

    def matches(self, doc: IndexedEntry) -> bool:
        if not self.tokens:
            return False
        if not doc.token_sets[self.field].issuperset(self.tokens):
            return False
        if len(self.tokens) == 1:
            return True
        haystack, needle = doc.tokens[self.field], self.tokens
        n = len(needle)
        return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class ExistsQuery(Query):
    """``user:*``: the field has at least one token (e.g. entries of authenticated callers)."""

    field: str

    def matches(self, doc: IndexedEntry) -> bool:
        return bool(doc.tokens[self.field])


@dataclass(frozen=True)
class ResultQuery(Query):
    """``result:true`` / ``result:false`` (Teaclave's index has a ``result`` field too)."""

    value: bool

    def matches(self, doc: IndexedEntry) -> bool:
        return doc.entry.result is self.value


@dataclass(frozen=True)
class BooleanQuery(Query):
    """Tantivy's BooleanQuery over ``(occur, query)`` clauses.

    An entry matches when no MUST_NOT clause matches, every MUST clause
    matches, and — if there is no MUST clause — at least one SHOULD clause
    does. A clause list made only of MUST_NOT clauses matches every entry they
    do not exclude (``NOT message:authenticate`` lists the rest), as if an
    implicit ``*`` were present; plain Tantivy/Lucene would match nothing,
    which is never what the person typing it wants.
    """

    clauses: tuple[tuple[Occur, Query], ...] = field(default_factory=tuple)

    def matches(self, doc: IndexedEntry) -> bool:
        has_must = has_should = any_should = False
        for occur, query in self.clauses:
            if occur is Occur.MUST_NOT:
                if query.matches(doc):
                    return False
            elif occur is Occur.MUST:
                has_must = True
                if not query.matches(doc):
                    return False
            else:
                has_should = True
                any_should = any_should or query.matches(doc)
        return has_must or any_should or not has_should


# --- the parser -------------------------------------------------------------------

MAX_QUERY_LENGTH = 64 * 1024
MAX_NESTING = 64
_FIELD_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:")
_WORD_END = frozenset(' \t\r\n\f\v()"')
_OPERATORS = frozenset({"AND", "OR", "NOT"})


@dataclass
class _Clause:
    occur: Occur
    query: Query


class _Parser:
    """Recursive descent over the query text; see :func:`parse_query` for the grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # -- scanning helpers

    def error(self, why: str, at: int | None = None) -> AuditError:
        return AuditError(f"invalid query at position {self.pos if at is None else at}: {why}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def peek_operator(self) -> str | None:
        """The operator word (``AND``/``OR``/``NOT``) at the cursor, if it stands alone."""
        self.skip_ws()
        for op in _OPERATORS:
            end = self.pos + len(op)
            if self.text.startswith(op, self.pos) and (end >= len(self.text) or self.text[end] in _WORD_END):
                return op
        return None

    # -- grammar

    def parse(self) -> Query:
        if self.at_end():
            return MatchNone()
        query = self.disjunction(DEFAULT_FIELD)
        if not self.at_end():
            raise self.error(f"unexpected {self.peek()!r}" if self.peek() != ")" else "unbalanced ')'")
        return query

    def disjunction(self, default_field: str) -> Query:
        """Clauses joined by ``OR`` or by juxtaposition (Tantivy's default operator, OR)."""
        clauses = [self.conjunction(default_field)]
        while not self.at_end() and self.peek() != ")":
            if self.peek_operator() == "OR":
                self.pos += 2
                if self.at_end() or self.peek() == ")" or self.peek_operator() in ("AND", "OR"):
                    raise self.error("expected a clause after OR")
            clauses.append(self.conjunction(default_field))
        if len(clauses) == 1 and clauses[0].occur is Occur.SHOULD:
            return clauses[0].query
        return BooleanQuery(tuple((c.occur, c.query) for c in clauses))

    def conjunction(self, default_field: str) -> _Clause:
        """Unary clauses joined by ``AND`` (binds tighter than OR and juxtaposition)."""
        operator = self.peek_operator()
        if operator in ("AND", "OR"):
            raise self.error(f"{operator} needs a clause on its left")
        items = [self.unary(default_field)]
        while self.peek_operator() == "AND":
            self.pos += 3
            if self.at_end() or self.peek() == ")" or self.peek_operator() in ("AND", "OR"):
                raise self.error("expected a clause after AND")
            items.append(self.unary(default_field))
        if len(items) == 1:
            return items[0]
        # Inside a conjunction a bare clause is required; +x is the same as x.
        return _Clause(
            Occur.SHOULD,
            BooleanQuery(tuple((Occur.MUST_NOT if c.occur is Occur.MUST_NOT else Occur.MUST, c.query) for c in items)),
        )

    def unary(self, default_field: str) -> _Clause:
        self.skip_ws()
        if self.peek_operator() == "NOT":
            self.pos += 3
            if self.at_end() or self.peek() == ")" or self.peek_operator() is not None:
                raise self.error("expected a clause after NOT")
            return _Clause(Occur.MUST_NOT, self.primary(default_field))
        if self.peek() in ("+", "-"):
            sign = self.peek()
            self.pos += 1
            if self.pos >= len(self.text) or self.text[self.pos] in _WORD_END - {"(", '"'}:
                raise self.error(f"expected a clause right after {sign!r}")
            occur = Occur.MUST if sign == "+" else Occur.MUST_NOT
            return _Clause(occur, self.primary(default_field))
        return _Clause(Occur.SHOULD, self.primary(default_field))

    def primary(self, default_field: str) -> Query:
        self.skip_ws()
        start = self.pos
        name = default_field
        match = _FIELD_PREFIX.match(self.text, self.pos)
        fielded = match is not None
        if match is not None:
            name = match.group()[:-1]
            if name not in FIELDS and name != "result":
                raise self.error(f"field does not exist: {name!r}", start)
            self.pos = match.end()
            if self.pos >= len(self.text) or self.text[self.pos] in " \t\r\n\f\v)":
                raise self.error(f"expected a term after '{name}:'")
        char = self.peek()
        if char == "(":
            if name == "result":
                raise self.error("result takes true or false, not a group", start)
            return self.group(name)
        if char == '"':
            return self.leaf(name, self.phrase(), start)
        if char == ")":
            raise self.error("unbalanced ')'")
        text, escaped = self.word()
        if text == "*" and not escaped:
            return ExistsQuery(name) if fielded and name != "result" else MatchAll()
        return self.leaf(name, text, start)

    def group(self, default_field: str) -> Query:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"parentheses nest deeper than {MAX_NESTING}")
        open_at = self.pos
        self.pos += 1
        if self.at_end():
            raise self.error("unbalanced '('", open_at)
        if self.peek() == ")":
            raise self.error("empty group '()'", open_at)
        query = self.disjunction(default_field)
        if self.at_end() or self.peek() != ")":
            raise self.error("unbalanced '('", open_at)
        self.pos += 1
        self.depth -= 1
        return query

    def phrase(self) -> str:
        open_at = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if char == '"':
                return "".join(chars)
            chars.append(char)
        raise self.error("unterminated '\"'", open_at)

    def word(self) -> tuple[str, bool]:
        """The word at the cursor, unescaped, and whether it contained an escape (``\\*`` is not ``*``)."""
        chars: list[str] = []
        escaped = False
        while self.pos < len(self.text) and self.text[self.pos] not in _WORD_END:
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self.error("a '\\' must escape a character")
                chars.append(self.text[self.pos + 1])
                escaped = True
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        if not chars:  # pragma: no cover - callers only get here on a word character
            raise self.error("expected a term")
        return "".join(chars), escaped

    def leaf(self, name: str, text: str, start: int) -> Query:
        if name == "result":
            value = text.strip().lower()
            if value not in ("true", "false"):
                raise self.error(f"result takes true or false, not {text!r}", start)
            return ResultQuery(value == "true")
        tokens = tuple(tokenize(text))
        return TermQuery(name, tokens) if tokens else MatchNone()


def parse_query(text: str) -> Query:
    """Parse a QueryAuditLogs query (Tantivy's syntax, the parts that apply to audit logs).

    Grammar (whitespace separates clauses; keywords are upper case)::

        query       := [ disjunction ]                         empty → matches nothing
        disjunction := conjunction ( [ "OR" ] conjunction )*   OR, or juxtaposition
        conjunction := unary ( "AND" unary )*                  AND binds tighter than OR
        unary       := "+" primary | "-" primary | "NOT" primary | primary
        primary     := [ field ":" ] ( word | '"' phrase '"' | "(" disjunction ")" | "*" )
        field       := "user" | "message" | "result"

    Semantics:

    * A bare term searches ``message``; ``user:x`` / ``message:x`` search that
      field; ``field:( … )`` makes ``field`` the default inside the group.
    * A word or phrase is tokenised like the fields (split on every
      non-alphanumeric character, lower-cased). One token is a term query;
      several are a phrase (consecutive, in order): ``user:frontend_user`` is
      the phrase ``frontend user``. Matching is case-insensitive. A word with no
      token at all (``user:__``) matches nothing. ``\\`` escapes the next
      character (``foo\\:bar``, ``\\(``).
    * Juxtaposed clauses combine with Tantivy's default operator, OR:
      ``register_function approve_task`` lists both. ``+x`` makes a clause
      required, ``-x`` / ``NOT x`` excludes; with a required clause present,
      plain clauses are optional (Lucene/Tantivy semantics). ``a AND b OR c``
      is ``(a AND b) OR c``. See :class:`BooleanQuery` for negative-only lists.
    * ``*`` matches everything; ``user:*`` every entry with a user;
      ``result:true`` / ``result:false`` filter by outcome (Teaclave's index
      has that field; the spec only promises ``user`` and ``message``).

    Anything else is refused with an :class:`AuditError` naming the position
    and the reason: an unknown field, an unbalanced parenthesis or quote, an
    operator without its operand, an empty group.
    """
    if len(text) > MAX_QUERY_LENGTH:
        raise AuditError(f"query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(text).parse()


# --- ordering and limiting ---------------------------------------------------------


def check_limit(limit: int) -> None:
    """``limit`` 0 is an error in Teaclave (Tantivy's TopDocs refuses it), and so is a negative one."""
    if limit <= 0:
        raise AuditError("limit must be greater than 0")


def search(query: Query, documents: Iterable[IndexedEntry], limit: int) -> list[Entry]:
    """The matching entries, newest first, at most ``limit``.

    ``documents`` must come in insertion order (the order SaveLogs stored
    them). Teaclave sorts its Tantivy hits on a date field that keeps whole
    seconds, and Tantivy breaks ties by document order, so entries of the same
    second come out oldest-inserted first. ``heapq.nsmallest`` is stable, so
    keying on the negated second reproduces exactly that.
    """
    check_limit(limit)
    hits = (doc for doc in documents if query.matches(doc))
    return [doc.entry for doc in heapq.nsmallest(limit, hits, key=lambda doc: -doc.second)]
