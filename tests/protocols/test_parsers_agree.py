"""Where h11 and llhttp disagree on what is malformed, the stricter answer wins on both.

Each case below was found by feeding the same bytes to h11 and to llhttp
(the corpus and the differential tests in tests/reliability/
test_fuzz_protocol.py); each test runs on both connections (``http_parser``)
and feeds the input every way `check` knows.  A head llhttp refuses gets a
400 from both; one only h11 refuses gets h11's status from both.
"""

from __future__ import annotations

import pytest

from server.protocols.http.common import HttpLimits, Request, Response
from tests.protocols.helpers import (
    DATE_LINE,
    RAW_500,
    SERVER_LINE,
    check,
    error_response,
    feed,
    http_response,
)

pytestmark = pytest.mark.usefixtures("http_parser")

H = b"Host: a\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
POST = b"POST /echo HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def app(request: Request) -> Response:
    return Response(200, [(b"content-length", b"2")], b"ok")


OK = http_response(b"HTTP/1.1 200 OK", b"content-length: 2", SERVER_LINE, DATE_LINE, body=b"ok")


def refused(data: bytes, status: int = 400, limits: HttpLimits | None = None) -> None:
    """`data` (and a GET pipelined behind it) gets `status`, a close, and nothing else."""
    check(
        app,
        data + GET,
        error_response(status),
        should_close=True,
        busy=False,
        requests=0,
        limits=limits,
    )
    fed = feed(app, [data + GET], limits)
    assert (fed.counters.client_errors, fed.counters.app_errors) == (1, 0)


def served(data: bytes, answers: int = 1) -> None:
    check(app, data, OK * answers, should_close=False, busy=False, requests=answers, errors=0)


# -- llhttp refuses, h11 accepted --------------------------------------------------


def test_content_length_with_transfer_encoding_is_rejected_by_both_parsers() -> None:
    """h11 frames it by Transfer-Encoding (the server then closed after it); llhttp
    refuses it (RFC 9112 6.1 allows either).  Nothing smuggled behind it is read."""
    refused(POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    refused(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "lengths", [b"Content-Length: 5\r\nContent-Length: 5\r\n", b"Content-Length: 5, 5\r\n"]
)
def test_repeated_equal_content_length_is_rejected_by_both_parsers(lengths: bytes) -> None:
    """h11 merges equal values; llhttp refuses a second one, and any comma."""
    refused(POST + lengths + b"\r\nhello")


def test_content_length_over_2_64_is_rejected_by_both_parsers() -> None:
    """h11 reads up to 20 digits (the server answered 413); llhttp refuses an overflow."""
    refused(POST + b"Content-Length: 18446744073709551616\r\n\r\n")


@pytest.mark.parametrize(
    "coding",
    [b"gzip", b"chunked, identity", b"chunked, gzip", b"xchunked", b"chunked, chunked", b""],
)
def test_transfer_coding_not_ending_in_chunked_is_rejected_by_both_parsers(coding: bytes) -> None:
    """h11 answered 501 (a coding it does not support); llhttp refuses with 400 a
    request whose codings do not end in chunked (RFC 9112 6.3 says 400)."""
    refused(POST + b"Transfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n")


def test_two_transfer_encoding_headers_are_rejected_by_both_parsers() -> None:
    refused(POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\tc\r\n\r\n",
        POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        CHUNKED + b"0\r\nX-T: a\r\n b\r\n\r\n",
    ],
    ids=["header", "transfer-encoding", "trailer"],
)
def test_obs_fold_is_rejected_by_both_parsers(data: bytes) -> None:
    """h11 unfolds continuation lines; llhttp refuses them (RFC 9112 5.2 allows that)."""
    refused(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
        CHUNKED + b"0\r\n\n",
        CHUNKED + b"0\r\nX-T: a\n\n",
    ],
    ids=["request-line", "header", "after-last-chunk", "trailer"],
)
def test_bare_lf_is_rejected_by_both_parsers(data: bytes) -> None:
    """h11 ends a line at a bare LF; llhttp wants CRLF."""
    refused(data)


def test_http_1_2_is_rejected_by_both_parsers() -> None:
    """h11 reads any HTTP/d.d (the server answered 505); llhttp knows only 0.9, 1.0,
    1.1 and 2.0.  HTTP/2.0 is still answered 505 by both."""
    refused(b"GET / HTTP/1.2\r\n" + H + b"\r\n")
    refused(b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505)


@pytest.mark.parametrize("method", [b"FOO", b"get", b"M_SEARCH"])
def test_unknown_method_is_rejected_by_both_parsers(method: bytes) -> None:
    """h11 takes any token as a method; llhttp only those it knows (WebDAV's too)."""
    refused(method + b" / HTTP/1.1\r\n" + H + b"\r\n")
    served(b"PROPFIND / HTTP/1.1\r\n" + H + b"\r\n")


def test_http2_preface_is_rejected_by_both_parsers() -> None:
    """h11 reads ``PRI * HTTP/2.0`` as a request (then 505); llhttp refuses the preface."""
    refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


@pytest.mark.parametrize("target", [b"a:443", b"abc", b"a+b://c/"])
def test_target_of_no_known_form_is_rejected_by_both_parsers(target: bytes) -> None:
    """h11 takes any visible characters as a target; llhttp wants a path, ``*``, or
    an absolute URL (and the authority form only for CONNECT)."""
    refused(b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
    served(b"GET http://a/b?c HTTP/1.1\r\n" + H + b"\r\n")
    served(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n")


@pytest.mark.parametrize("ctl", [b"\x01", b"\x08", b"\x1f", b"\x7f"], ids=repr)
def test_control_character_in_a_header_value_is_rejected_by_both_parsers(ctl: bytes) -> None:
    """h11 refuses only NUL and whitespace other than SP/HTAB; llhttp every control
    character but HTAB, in headers and in trailers."""
    refused(b"GET / HTTP/1.1\r\n" + H + b"X-A: a" + ctl + b"b\r\n\r\n")
    refused(CHUNKED + b"0\r\nX-T: a" + ctl + b"\r\n\r\n")


@pytest.mark.parametrize("line", [b"5;\r\n", b"5; a=b\r\n", b"5;a\x00\r\n", b"5;a=b c\r\n"])
def test_chunk_extension_llhttp_refuses_is_rejected_by_both_parsers(line: bytes) -> None:
    """h11 takes anything after a ``;``; llhttp wants ``;name[=value]`` without spaces."""
    refused(CHUNKED + line + b"hello\r\n0\r\n\r\n")


@pytest.mark.parametrize("line", [b"5 \r\n", b"5\t\r\n"], ids=["space", "tab"])
def test_whitespace_after_the_chunk_size_is_rejected_by_both_parsers(line: bytes) -> None:
    refused(CHUNKED + line + b"hello\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "trailer", [b"Content-Length: 5", b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"]
)
def test_framing_header_in_the_trailers_is_rejected_by_both_parsers(trailer: bytes) -> None:
    """h11 checks trailers like headers (answering 501 to a gzip one); llhttp refuses
    framing headers there outright."""
    refused(CHUNKED + b"0\r\n" + trailer + b"\r\n\r\n")


# -- h11 refuses, llhttp accepted --------------------------------------------------


@pytest.mark.parametrize("blank", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_empty_line_before_the_request_line_is_rejected_by_both_parsers(blank: bytes) -> None:
    """llhttp skips empty lines before a request (RFC 9112 2.2 allows that); h11 refuses."""
    refused(blank + GET)


def test_missing_host_on_http11_is_rejected_by_both_parsers() -> None:
    """RFC 9112 3.2: llhttp does not check Host; h11 does.  HTTP/1.0 needs none."""
    refused(b"GET / HTTP/1.1\r\n\r\n")
    check(
        app,
        b"GET / HTTP/1.0\r\n\r\n",
        OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        should_close=True,
        requests=1,
        errors=0,
    )


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_two_hosts_are_rejected_by_both_parsers(version: bytes) -> None:
    refused(b"GET / HTTP/" + version + b"\r\nHost: a\r\nHost: b\r\n\r\n")


@pytest.mark.parametrize("line", [b"GET  / HTTP/1.1", b"GET /  HTTP/1.1", b"GET\t/ HTTP/1.1"])
def test_extra_whitespace_in_the_request_line_is_rejected_by_both_parsers(line: bytes) -> None:
    refused(line + b"\r\n" + H + b"\r\n")


def test_http09_request_line_is_rejected_by_both_parsers() -> None:
    """llhttp reads ``GET /`` alone as HTTP/0.9; h11 wants a version."""
    refused(b"GET /\r\n\r\n")


def test_content_length_of_21_digits_is_rejected_by_both_parsers() -> None:
    """llhttp reads leading zeros without limit; h11 refuses more than 20 digits."""
    refused(POST + b"Content-Length: " + b"0" * 20 + b"5\r\n\r\nhello")
    check(
        lambda request: Response(
            200, [(b"content-length", b"%d" % len(request.body))], request.body
        ),
        POST + b"Content-Length: 005\r\n\r\nhello",
        http_response(
            b"HTTP/1.1 200 OK", b"content-length: 5", SERVER_LINE, DATE_LINE, body=b"hello"
        ),
        should_close=False,
        requests=1,
        errors=0,
    )


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked"])
def test_coding_before_chunked_gets_501_from_both_parsers(coding: bytes) -> None:
    """llhttp frames the body by its final chunked; h11 supports chunked alone (501)."""
    refused(POST + b"Transfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n", 501)


# -- responses: h11 sends it, the serializer would not ------------------------------


@pytest.mark.parametrize("reason", [b"OK\r\nx-injected: 1", b"O\nK", b"O\x00K"], ids=repr)
def test_reason_phrase_breaking_the_status_line_is_refused_by_both_parsers(
    reason: bytes,
) -> None:
    """h11 writes any reason phrase into the status line; both now refuse one it
    would not accept reading a status line, with the raw 500 and a close."""
    check(
        lambda request: Response(200, [(b"content-length", b"0")], reason=reason),
        GET,
        RAW_500,
        should_close=True,
        busy=False,
        requests=1,
    )
    fed = feed(lambda request: Response(200, [(b"content-length", b"0")], reason=reason), [GET])
    assert (fed.counters.client_errors, fed.counters.app_errors) == (0, 1)


def test_2xx_to_connect_is_refused_by_both_parsers() -> None:
    """h11 would switch protocols and send nothing more: a raw 500 and a close."""
    check(
        app,
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + GET,
        RAW_500,
        should_close=True,
        busy=False,
        requests=1,
        errors=1,
    )
