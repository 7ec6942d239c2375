"""What works for you: keep rate by modifier, guide pool, model, guidance scale and template."""
from __future__ import annotations

from itertools import groupby

from flask import Blueprint, render_template

from .context import get_store

bp = Blueprint("report", __name__)


@bp.route("/report")
def page():
    """The report as bar charts (inline SVG), one per setting."""
    groups = [(dim, list(rows)) for dim, rows in groupby(get_store().keep_report(), key=lambda r: r.dimension)]
    return render_template("report.html", groups=groups)
