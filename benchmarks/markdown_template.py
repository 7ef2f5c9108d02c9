"""Fill a Markdown template with what renderers compute: benchmarks/report.py's RESULTS.md and README tables.

``fill(template, parts)``: ``parts`` maps a name to its renderer, a function of no arguments that
returns text, a list of rows, a dict (of values, lists of rows, dicts) or "" (nothing to show). The
template says:

    {{ name }}                  the text renderer ``name`` returns (a table, a sentence)
    {{ name.key.key }}          a value inside the dict renderer ``name`` returns,
    {{ name.key:.2f }}          ... optionally formatted: format(value, ".2f")
    {{ if name }}...{{ end }}   the text between, kept when ``name`` (or ``name.key``) renders
                                something non-empty; blocks nest, and a line break right after
                                ``{{ if ... }}`` or right before ``{{ end }}`` is not output
    {{ for name.key }}| {a} |   at the start of a line: the rest of the line once per row of the
                                list ``name.key`` renders, filled in by str.format from the row (a
                                dict: ``{a:.2f}``, ``{b[c]}``, where a key of digits is a number); a
                                value the row lacks is written "-"
    {{# comment }}              dropped

Paragraphs (text between blank lines) left empty are dropped, and so is a paragraph whose
{{ for }} lines have no rows (a table's titles go with its rows); so a renderer returns "" when
its data are missing and its paragraphs go with it. A placeholder that names no renderer, a
renderer the template does not name, or a key a renderer did not return is an error.
"""

import re
import string

PLACEHOLDER = re.compile(r"\{\{ ([\w.]+)(?::([^{}]*?))? \}\}")
IF_BLOCK = re.compile(r"\{\{ if ([\w.]+) \}\}\n?((?:(?!\{\{ if ).)*?)\n?\{\{ end \}\}", re.S)
FOR_LINE = re.compile(r"^\{\{ for ([\w.]+) \}\}(.*)\n?", re.M)


class _Cells(string.Formatter):
    """str.format for a table row: a value the row lacks (or None) is written "-"."""

    def get_field(self, field_name, args, kwargs):
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, TypeError):
            return None, field_name

    def format_field(self, value, format_spec):
        return "-" if value is None else format(value, format_spec)


def names(text):
    """The renderers a template names."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"\{\{ (?:if |for )?([\w.]+)[ :]", text)} - {"end"}


def fill(template, parts, source="template"):
    """The template with its {{ if }} blocks resolved, its placeholders rendered by ``parts`` and its
    {{ for }} lines a line per row (the syntax is in the module's docstring); ``source`` names it in errors."""
    text = re.sub(r"\{\{#.*?\}\}\n?", "", template, flags=re.S).strip()
    if names(text) != set(parts):
        unknown, unused = sorted(names(text) - set(parts)), sorted(set(parts) - names(text))
        raise ValueError(f"{source}: no renderer for {unknown}, no placeholder for {unused}")
    cache = {}

    def value(path, strict=True):
        name, *keys = path.split(".")
        if name not in cache:
            cache[name] = parts[name]() or ""
        v = cache[name]
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                if strict:
                    raise ValueError(f"{source}: {{{{ {path} }}}}: {name} rendered no {k!r}")
                return None
            v = v[k]
        return v

    def render(m):
        v = value(m.group(1))
        if isinstance(v, dict):
            raise ValueError(f"{source}: {{{{ {m.group(1)} }}}} is a dict; name one of its keys")
        try:
            return format(v, m.group(2) or "")
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {{{{ {m.group(0)[3:-3]} }}}}: {e}") from e

    def expand(p):
        rows = []

        def each(m):
            rendered = value(m.group(1).split(".")[0])  # a renderer that rendered something has every key it names
            found = value(m.group(1), strict=bool(rendered)) or []
            rows.extend(found)
            return "".join(_Cells().vformat(m.group(2), (), r) + "\n" for r in found)

        p, loops = FOR_LINE.subn(each, PLACEHOLDER.sub(render, p))
        return p if not loops else p.rstrip("\n") if rows else ""

    while m := IF_BLOCK.search(text):
        text = text[: m.start()] + (m.group(2) if value(m.group(1), strict=False) else "") + text[m.end() :]
    if re.search(r"\{\{ (if [\w.]+|end) \}\}", text):
        raise ValueError(f"{source}: an {{{{ if }}}} without its {{{{ end }}}}, or the reverse")
    paragraphs = (expand(p) for p in text.split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p) + "\n"
