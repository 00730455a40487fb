"""``docs/api.md`` agrees with ``/openapi.json``: the same endpoints, the same statuses
and headers per endpoint, the same body shapes, and every field its tables name exists
in the schema they are headed with (and every field of that schema is in the table).

The doc is kept regular for this:

* an endpoint is a heading ``### `METHOD /path` ``; its answers are the table whose
  first column is ``status`` (columns: status, headers, body, when), the body column
  naming the schemas in backticks;
* a schema's fields are the table whose first column is ``field``, under a heading
  ending in the schema's name in backticks; ``a.b`` names a field of an object field,
  ``a[].b`` a field of an array's items; a ``required`` column says yes or no.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_DOC = REPO / "docs" / "api.md"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_ENDPOINT = re.compile(r"^`?(GET|POST|PUT|PATCH|DELETE) (/\S*?)`?$")
_SCHEMA_NAME = re.compile(r"`([A-Z][A-Za-z0-9]*)`\s*$")
_CODE = re.compile(r"`([^`]+)`")
_SCHEMA_TOKEN = re.compile(r"^[A-Z][A-Za-z0-9]*$")


@dataclass
class Table:
    heading: str
    endpoint: tuple[str, str] | None  # (method, path) of the section it is in
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def column(self, name: str) -> list[str]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse(text: str) -> list[Table]:
    """Every table of the doc, with the heading it is under and the endpoint section."""
    tables: list[Table] = []
    heading, endpoint, table = "", None, None
    for line in text.splitlines():
        if match := _HEADING.match(line):
            level, heading = len(match[1]), match[2]
            if endpoint_match := _ENDPOINT.match(heading):
                endpoint = (endpoint_match[1].lower(), endpoint_match[2])
            elif level <= 3:
                endpoint = None
            table = None
        elif line.startswith("|"):
            cells = _cells(line)
            if table is None:
                table = Table(heading, endpoint, [cell.lower() for cell in cells])
                tables.append(table)
            elif not all(set(cell) <= set("-: ") for cell in cells):
                assert len(cells) == len(table.columns), f"a row of the table under {heading!r} has {len(cells)} cells: {line}"
                table.rows.append(cells)
        else:
            table = None
    return tables


TABLES = parse(API_DOC.read_text())
ANSWER_TABLES = [t for t in TABLES if t.columns[0] == "status"]
FIELD_TABLES = [t for t in TABLES if t.columns[0] == "field" and _SCHEMA_NAME.search(t.heading)]




def _schema(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None


def _branches(schema: dict) -> list[dict]:
    """A schema's alternatives (``anyOf`` of pydantic's optional fields), else itself."""
    return schema.get("anyOf") or schema.get("oneOf") or [schema]


def _child(document: dict, schema: dict, step: str) -> tuple[dict, str | None]:
    """The schema of field ``step`` (``name`` or ``name[]``) of an object schema, and
    the component it is when it is one."""
    for branch in _branches(schema):
        if (name := _ref_name(branch)) is not None:
            branch = _schema(document, name)
        name = step.removesuffix("[]")
        if name in branch.get("properties", {}):
            found = branch["properties"][name]
            if step.endswith("[]"):
                found = next(b["items"] for b in _branches(found) if b.get("type") == "array")
            refs = [_ref_name(b) for b in _branches(found) if _ref_name(b)]
            return found, refs[0] if refs else None
    raise KeyError(step)


def _steps(field_name: str) -> list[str]:
    return field_name.replace("[].", "[] .").replace(".", " ").split()


def _field_names(table: Table) -> list[str]:
    names = []
    for cell in table.column("field"):
        code = _CODE.fullmatch(cell)
        assert code, f"field cells are one name in backticks: {cell!r} under {table.heading!r}"
        names.append(code[1])
    return names


def _documented_endpoints() -> dict[tuple[str, str], Table]:
    answers = {}
    for table in ANSWER_TABLES:
        assert table.endpoint is not None, f"an answers table outside an endpoint section: {table.heading!r}"
        assert table.endpoint not in answers, f"two answers tables for {table.endpoint}"
        assert table.columns == ["status", "headers", "body", "when"], table.columns
        answers[table.endpoint] = table
    return answers


def test_the_doc_has_every_operation_of_the_document_and_no_other(document):
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert set(_documented_endpoints()) == operations


def test_each_endpoints_statuses_are_the_documents(document):
    for (method, path), table in _documented_endpoints().items():
        documented = set(document["paths"][path][method]["responses"])
        assert set(table.column("status")) == documented, (method, path)


def test_each_answers_headers_and_body_shapes_are_the_documents(document):
    for (method, path), table in _documented_endpoints().items():
        responses = document["paths"][path][method]["responses"]
        shapes_by_status: dict[str, set[str]] = {}
        for status, headers, body, _ in table.rows:
            response = responses[status]
            for header in _CODE.findall(headers):
                assert header in response.get("headers", {}), (method, path, status, header)
            shapes_by_status.setdefault(status, set()).update(t for t in _CODE.findall(body) if _SCHEMA_TOKEN.match(t))
        for status, shapes in shapes_by_status.items():
            (content,) = responses[status]["content"].values()
            schema = content["schema"]
            assert shapes == {_ref_name(b) for b in _branches(schema) if _ref_name(b)}, (method, path, status)


@pytest.mark.parametrize("table", FIELD_TABLES, ids=lambda t: _SCHEMA_NAME.search(t.heading)[1])
def test_each_field_table_is_its_schemas_fields(document, table):
    name = _SCHEMA_NAME.search(table.heading)[1]
    schema = _schema(document, name)
    names = _field_names(table)
    for field_name in names:
        current = schema
        for step in _steps(field_name):
            try:
                current, _ = _child(document, current, step)
            except KeyError:
                pytest.fail(f"{name} has no field {field_name!r} (named in docs/api.md)")
    assert {_steps(n)[0].removesuffix("[]") for n in names} == set(schema["properties"]), name
    if "required" in table.columns:
        required = {n for n, answer in zip(names, table.column("required"), strict=True) if answer == "yes"}
        assert required == set(schema.get("required", [])), name


def test_every_schema_of_the_document_is_documented(document):
    """Each component has a table of its own, or all its fields are named through a
    field of another (``stripe.value``, ``details[].field``)."""
    documented = {_SCHEMA_NAME.search(t.heading)[1] for t in FIELD_TABLES}
    reached: dict[str, set[str]] = {}
    for table in FIELD_TABLES:
        schema = _schema(document, _SCHEMA_NAME.search(table.heading)[1])
        for field_name in _field_names(table):
            current, parent = schema, None
            for step in _steps(field_name):
                if parent is not None:
                    reached.setdefault(parent, set()).add(step.removesuffix("[]"))
                current, parent = _child(document, current, step)
    for name, schema in document["components"]["schemas"].items():
        assert name in documented or reached.get(name) == set(schema["properties"]), name


def test_the_doc_refers_to_nothing_outside_the_repository():
    text = API_DOC.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("#"):
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}
            assert target[1:] in slugs, target
        else:
            assert not re.match(r"[a-z]+:", target), f"a link out of the repository: {target}"
            assert (API_DOC.parent / target).resolve().is_relative_to(REPO), target
            assert (API_DOC.parent / target).exists(), target
    for path in re.findall(r"`([\w./-]+\.(?:md|py|png|txt|cfg))`", text):
        assert (REPO / path).exists(), f"docs/api.md names {path}, not in the repository"


@pytest.mark.parametrize("document", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))])
def test_readme_and_docs_refer_to_no_file_outside_the_repository(document):
    """A clone holds everything its reader is sent to: every relative link and named file
    is in the repository, every anchor is a heading; web links (Stripe's docs) may go out."""
    path = REPO / document
    text = path.read_text()
    slugs = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("#"):
            assert target[1:] in slugs, f"{document}: no heading for {target}"
        elif not re.match(r"https?:", target):
            file_part = target.split("#")[0]
            assert (path.parent / file_part).resolve().is_relative_to(REPO), f"{document}: {target} is outside the repository"
            assert (path.parent / file_part).exists(), f"{document}: {target} does not exist"
    assert not re.search(r"\.\./shared|CONTRACT\.md|beside (this|the) repository", text), document
