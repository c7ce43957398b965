"""Tables people open in a spreadsheet: CSV that never runs a cell as a formula (CSV injection), and reads back
unchanged."""
from __future__ import annotations

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# characters a spreadsheet skips before deciding that a cell is a formula
INVISIBLE_LEAD = " \t\r\n\u00a0\u2000\u2001\u2002\u2003\u2007\u2009\u200a\u200b\u200c\u200d\u2060\u3000\ufeff"


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """For a CSV a spreadsheet may open: prefix with a quote the cells it would run as formulas (CSV injection), also
    when invisible characters (spaces, no-break or zero-width spaces, a byte-order mark) come before the formula
    sign, and the cells that already start with a quote, so that `restore_formulas` gets every value back."""
    def fix(v):
        return "'" + v if isinstance(v, str) and (v.startswith(("'", *FORMULA_PREFIXES)) or
                                                  v.lstrip(INVISIBLE_LEAD).startswith(FORMULA_PREFIXES)) else v
    return df.map(fix)


def restore_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """The values `neutralise_formulas` was given (one leading quote removed)."""
    return df.map(lambda v: v[1:] if isinstance(v, str) and v.startswith("'") else v)


def export_csv(df: pd.DataFrame) -> bytes:
    """A table as CSV bytes, safe to open in a spreadsheet."""
    return neutralise_formulas(df).to_csv(index=False).encode("utf-8")
