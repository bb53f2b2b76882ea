"""AIP-158 paging over the real SQLite table store: sizes, opaque tokens, order."""

import base64

import pytest

from nbml_server.domain.paging import (DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, list_page,
                                       resolve_page_size)
from nbml_server.errors import InvalidArgument

T = "jobs_by_user"
P = "usr_1"


def fill(store, n, partition=P):
    keys = [f"k{i:04d}" for i in range(n)]
    for i, key in enumerate(keys):
        store.put(T, partition, key, {"i": i, "key": key})
    return keys


def all_pages(store, *, page_size, descending=True, partition=P):
    seen, token, pages = [], "", 0
    while True:
        page = list_page(store, T, partition, page_size=page_size, page_token=token,
                         descending=descending)
        pages += 1
        assert len(page.rows) <= page_size
        seen.extend(row["key"] for row in page.rows)
        token = page.next_page_token
        if not token:
            return seen, pages
        assert pages < 1000, "paging does not end"


# -- page sizes ------------------------------------------------------------------------

def test_page_size_zero_means_default():
    assert resolve_page_size(0) == DEFAULT_PAGE_SIZE == 50
    assert resolve_page_size(0, default=7) == 7


def test_positive_page_size_is_kept():
    assert resolve_page_size(1) == 1
    assert resolve_page_size(MAX_PAGE_SIZE) == MAX_PAGE_SIZE


def test_page_size_is_clamped_to_the_maximum():
    assert MAX_PAGE_SIZE == 1000
    assert resolve_page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    assert resolve_page_size(10**9) == MAX_PAGE_SIZE
    # A default larger than the maximum is clamped as well.
    assert resolve_page_size(0, default=5000) == MAX_PAGE_SIZE


@pytest.mark.parametrize("size", [-1, -50, -(2**31)])
def test_negative_page_size_is_invalid(size):
    with pytest.raises(InvalidArgument) as e:
        resolve_page_size(size)
    assert e.value.reason == "INVALID_PAGE_SIZE"
    assert [v.field for v in e.value.violations] == ["page_size"]
    assert str(size) in e.value.violations[0].description


def test_list_page_rejects_negative_size(store):
    fill(store, 3)
    with pytest.raises(InvalidArgument) as e:
        list_page(store, T, P, page_size=-1, page_token="")
    assert e.value.reason == "INVALID_PAGE_SIZE"


def test_default_page_size_applies_in_list_page(store):
    fill(store, DEFAULT_PAGE_SIZE + 5)
    page = list_page(store, T, P, page_size=0, page_token="")
    assert len(page.rows) == DEFAULT_PAGE_SIZE
    assert page.next_page_token
    page = list_page(store, T, P, page_size=0, page_token="", default_page_size=3)
    assert len(page.rows) == 3


def test_list_page_clamps_to_max(store):
    keys = fill(store, MAX_PAGE_SIZE + 2)
    page = list_page(store, T, P, page_size=MAX_PAGE_SIZE + 500, page_token="")
    assert len(page.rows) == MAX_PAGE_SIZE
    assert page.next_page_token
    rest = list_page(store, T, P, page_size=MAX_PAGE_SIZE + 500,
                     page_token=page.next_page_token)
    assert [r["key"] for r in rest.rows] == sorted(keys, reverse=True)[MAX_PAGE_SIZE:]
    assert rest.next_page_token == ""


# -- tokens ----------------------------------------------------------------------------

@pytest.mark.parametrize("n, size", [(0, 3), (1, 3), (3, 3), (7, 3), (9, 3), (10, 1),
                                     (25, 4), (12, 12), (12, 13)])
@pytest.mark.parametrize("descending", [True, False])
def test_tokens_walk_every_row_once(store, n, size, descending):
    keys = fill(store, n)
    seen, pages = all_pages(store, page_size=size, descending=descending)
    assert seen == sorted(keys, reverse=descending)
    assert len(seen) == len(set(seen))
    # Exactly as many pages as needed: no trailing empty page when n divides evenly.
    assert pages == max(1, -(-n // size))


def test_last_page_has_empty_token(store):
    fill(store, 5)
    first = list_page(store, T, P, page_size=3, page_token="")
    assert len(first.rows) == 3 and first.next_page_token
    last = list_page(store, T, P, page_size=3, page_token=first.next_page_token)
    assert len(last.rows) == 2
    assert last.next_page_token == ""


def test_exact_fit_has_no_next_page(store):
    fill(store, 4)
    page = list_page(store, T, P, page_size=4, page_token="")
    assert len(page.rows) == 4
    assert page.next_page_token == ""


def test_empty_partition(store):
    fill(store, 3, partition="someone_else")
    page = list_page(store, T, P, page_size=10, page_token="")
    assert page.rows == [] and page.next_page_token == ""


def test_descending_is_the_default_and_newest_first(store):
    fill(store, 5)
    page = list_page(store, T, P, page_size=10, page_token="")
    assert [r["key"] for r in page.rows] == ["k0004", "k0003", "k0002", "k0001", "k0000"]
    asc = list_page(store, T, P, page_size=10, page_token="", descending=False)
    assert [r["key"] for r in asc.rows] == ["k0000", "k0001", "k0002", "k0003", "k0004"]


def test_rows_are_the_stored_dicts(store):
    fill(store, 2)
    page = list_page(store, T, P, page_size=10, page_token="", descending=False)
    assert page.rows == [{"i": 0, "key": "k0000"}, {"i": 1, "key": "k0001"}]


def test_token_is_opaque_not_the_raw_key(store):
    fill(store, 4)
    token = list_page(store, T, P, page_size=2, page_token="").next_page_token
    assert "k0003" not in token and "k0002" not in token
    token.encode("ascii")  # safe to put in a URL / header


def test_rows_added_between_pages_do_not_cause_duplicates(store):
    fill(store, 6)
    first = list_page(store, T, P, page_size=3, page_token="")
    # A newer row (higher key) arrives: the descending walk continues past the old ones.
    store.put(T, P, "k9999", {"key": "k9999"})
    rest = list_page(store, T, P, page_size=10, page_token=first.next_page_token)
    keys = [r["key"] for r in first.rows] + [r["key"] for r in rest.rows]
    assert keys == ["k0005", "k0004", "k0003", "k0002", "k0001", "k0000"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("token", [
    "garbage",               # wrong padding
    "!!!!",                  # not base64 at all (decodes to nothing)
    "a",                     # a lone character
    "épée",                  # not ASCII
    _b64("no-prefix-key"),   # valid base64 but not one of our tokens
    _b64("x:k0001"),
    base64.urlsafe_b64encode(b"k:\xff\xfe").decode(),  # prefix but not UTF-8
])
def test_garbage_token_is_invalid(store, token):
    fill(store, 3)
    with pytest.raises(InvalidArgument) as e:
        list_page(store, T, P, page_size=2, page_token=token)
    assert e.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in e.value.violations] == ["page_token"]


def test_a_token_this_service_made_by_hand_works(store):
    # The format is k:<last key>; documenting it guards against accidental changes
    # that would invalidate tokens clients already hold.
    fill(store, 4)
    token = list_page(store, T, P, page_size=2, page_token="").next_page_token
    assert token == _b64("k:k0002")
