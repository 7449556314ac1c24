"""Row ids in URL paths: `{name:rowid}` matches only an id the databases can hold.

SQLite and PostgreSQL keep ids as signed 64-bit integers; a larger number in a URL used to reach the query and
fail there (a 500). With this convertor such a path matches no route at all, so the caller gets a 404 like any
other id that does not exist. Eighteen digits (< 10^18 < 2^63) is more rows than any registry will hold.
"""

from starlette.convertors import Convertor, register_url_convertor

ROW_ID_DIGITS = 18


class RowIdConvertor(Convertor[int]):
    regex = f"[0-9]{{1,{ROW_ID_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("rowid", RowIdConvertor())
