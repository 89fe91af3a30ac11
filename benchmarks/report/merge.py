"""``--update``: put the rows of a few measured configs into an existing report.

Measuring every config takes minutes per config on a CPU; after adding configs only their rows
need measuring. :func:`merge_reports` replaces or inserts the new rows (by config name, sorted) in
the tables of the existing report, keeps every other row as it was, and says under the header
which rows were measured when and how.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

__all__ = ['merge_reports']

_RESULTS = 'Result files read:'


def _split(md: str) -> List[Tuple[Optional[str], List[str]]]:
    """``[(heading or None for the header, lines)]`` for each ``## `` section."""
    sections: List[Tuple[Optional[str], List[str]]] = [(None, [])]
    for line in md.rstrip('\n').split('\n'):
        if line.startswith('## '):
            sections.append((line, []))
        else:
            sections[-1][1].append(line)
    return sections


def _rows(lines: List[str]) -> Dict[str, str]:
    """Table rows by config name (header and separator rows left out)."""
    out = {}
    for line in lines:
        if line.startswith('| ') and not line.startswith('| config |'):
            out[line.split('|')[1].strip()] = line
    return out


def _merge_table(lines: List[str], new: Dict[str, str]) -> List[str]:
    rows = [i for i, line in enumerate(lines)
            if line.startswith('| ') and not line.startswith('| config |')]
    if rows:
        first, last = rows[0], rows[-1] + 1
    else:  # a table without rows: the new rows after its separator
        first = last = max(i for i, line in enumerate(lines) if line.startswith('|---')) + 1
    merged = {**_rows(lines[first:last]), **new}
    return lines[:first] + [merged[k] for k in sorted(merged)] + lines[last:]


def _merge_results(lines: List[str], new_lines: List[str]) -> List[str]:
    """Merge the ``Result files read:`` bullets (``- config: `path```) by config name."""
    def bullets(ls):
        if _RESULTS not in ls:
            return {}
        start = ls.index(_RESULTS)
        return {ln[2:].split(':', 1)[0]: ln for ln in ls[start + 1:] if ln.startswith('- ')}
    new = bullets(new_lines)
    if not new:
        return lines
    old = bullets(lines)
    merged = {**old, **new}
    if _RESULTS in lines:
        lines = lines[:lines.index(_RESULTS)]
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines + ['', _RESULTS, ''] + [merged[k] for k in sorted(merged)]


def merge_reports(old_md: str, new_md: str, note: str) -> str:
    """The report ``old_md`` with the table rows of ``new_md`` put in.

    Args:
        old_md: The existing report (all configs).
        new_md: A report of some configs, rendered by the same tool.
        note: A sentence for under the header: which rows were measured, when, how.

    Returns:
        The merged markdown. Sections ``new_md`` has and ``old_md`` lacks are put before the
        notes; rows of configs in both are replaced; the notes are ``old_md``'s, with the result
        files of both.
    """
    old, new = _split(old_md), _split(new_md)
    headings = [h for h, _ in old]
    for heading, lines in new[1:]:
        rows = _rows(lines)
        if heading == '## Notes':
            i = headings.index(heading) if heading in headings else None
            if i is not None:
                old[i] = (heading, _merge_results(old[i][1], lines))
            continue
        if not rows:
            continue
        if heading in headings:
            i = headings.index(heading)
            old[i] = (heading, _merge_table(old[i][1], rows))
        else:
            at = headings.index('## Notes') if '## Notes' in headings else len(old)
            old.insert(at, (heading, lines))
            headings.insert(at, heading)
    header = old[0][1]
    # The note is a paragraph of its own after the "Generated ..." one and earlier notes.
    at = next((i for i, line in enumerate(header) if line.startswith('Generated ')), -1) + 1
    while at + 1 < len(header) and not header[at] and header[at + 1].startswith('Rows of '):
        at += 2
    old[0] = (None, header[:at] + ['', note] + header[at:])
    out = []
    for heading, lines in old:
        if heading is not None:
            out.append(heading)
        out += lines
    return '\n'.join(out) + '\n'
