"""Go text/template subset: fields, printing rules, control flow, functions and errors."""

from dataclasses import dataclass, field

import pytest

from dockyard.provisioner.cli.gotemplate import TemplateError, compile_template, render
from dockyard.provisioner.core.errors import UsageError


@dataclass
class Item:
    Name: str
    State: str = "Running"
    Active: bool = False
    Labels: list = field(default_factory=list)
    Options: dict | None = None


INSPECT = {
    "DriverName": "qemu",
    "Driver": {"IPAddress": "10.0.0.5", "Memory": 1024, "SSHPort": 22, "Disk": None},
    "HostOptions": {"EngineOptions": {"Labels": ["env=prod", "tier=web"]}},
}


# ----------------------------------------------------------------------------- fields and text


def test_fields_literal_text_and_spaces():
    assert render("name={{.Name}} state={{ .State }}!", Item("web")) == "name=web state=Running!"
    assert render("plain text only", None) == "plain text only"
    assert render("", {"a": 1}) == ""


def test_nested_fields_on_dicts_like_inspect():
    assert render("{{.Driver.IPAddress}}", INSPECT) == "10.0.0.5"
    assert render("{{.HostOptions.EngineOptions.Labels}}", INSPECT) == "[env=prod tier=web]"
    assert render("{{.DriverName}}", INSPECT) == "qemu"


def test_missing_map_keys_print_no_value_even_down_a_chain():
    assert render("{{.Nope}}", INSPECT) == "<no value>"
    assert render("{{.Nope.Deeper.Still}}", INSPECT) == "<no value>"
    assert render("{{.Driver.Disk}}", INSPECT) == "<no value>"  # JSON null


def test_object_attributes_and_unknown_attribute_error():
    assert render("{{.Name}} {{.Active}}", Item("a", Active=True)) == "a true"
    with pytest.raises(TemplateError, match=r"can't evaluate field Bogus in type Item"):
        render("{{.Bogus}}", Item("a"))
    with pytest.raises(TemplateError, match=r"can't evaluate field X in type string"):
        render("{{.Name.X}}", Item("a"))


def test_dot_and_root_variable():
    assert render("{{.}}", "hello") == "hello"
    assert render("{{range .Labels}}{{.}}/{{$.Name}} {{end}}", Item("m", Labels=["x", "y"])) == "x/m y/m "


# ----------------------------------------------------------------------------- printing rules


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (2.5, "2.5"),
        (1024.0, "1024"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (float("inf"), "+Inf"),
        (["a", "b"], "[a b]"),
        ([], "[]"),
        ([1, None, True], "[1 <nil> true]"),
        ({"b": 1, "a": "x"}, "map[a:x b:1]"),
        ({}, "map[]"),
        ({"k": [1, 2]}, "map[k:[1 2]]"),
        (None, "<no value>"),
    ],
)
def test_values_print_like_go(value, text):
    assert render("{{.V}}", {"V": value}) == text


def test_struct_prints_fields_in_braces():
    assert render("{{.}}", Item("n", Labels=["l"])) == "{n Running false [l] <nil>}"


# ----------------------------------------------------------------------------- functions


def test_json_compact_sorted_and_html_escaped():
    assert render("{{json .DriverName}}", INSPECT) == '"qemu"'
    assert render("{{json .Driver}}", INSPECT) == '{"Disk":null,"IPAddress":"10.0.0.5","Memory":1024,"SSHPort":22}'
    assert render("{{json .V}}", {"V": "<a&b>"}) == '"\\u003ca\\u0026b\\u003e"'
    assert render("{{json .Missing}}", INSPECT) == "null"
    assert render("{{json .}}", Item("n")) == '{"Name":"n","State":"Running","Active":false,"Labels":[],"Options":null}'


def test_prettyjson_uses_four_spaces():
    expected = '{\n    "a": [\n        1,\n        2\n    ],\n    "b": {}\n}'
    assert render("{{prettyjson .}}", {"b": {}, "a": [1, 2]}) == expected
    assert render("{{prettyjson .V}}", {"V": []}) == "[]"


def test_upper_lower_join_split_len():
    assert render("{{upper .Name}}-{{lower .State}}", Item("Web")) == "WEB-running"
    assert render('{{join .Labels ","}}', Item("n", Labels=["a", "b", "c"])) == "a,b,c"
    assert render('{{join .Labels ", "}}', Item("n")) == ""
    assert render('{{range split .V ":"}}[{{.}}]{{end}}', {"V": "a:b"}) == "[a][b]"
    assert render("{{len .L}} {{len .M}} {{len .S}}", {"L": [1, 2], "M": {"a": 1}, "S": "héllo"}) == "2 1 6"


def test_index_maps_lists_and_errors():
    assert render('{{index .M "key"}}', {"M": {"key": "v"}}) == "v"
    assert render('{{index .M "nope"}}', {"M": {}}) == "<no value>"
    assert render("{{index .L 1}}", {"L": ["a", "b"]}) == "b"
    assert render('{{index .M "l" 0}}', {"M": {"l": ["deep"]}}) == "deep"
    with pytest.raises(TemplateError, match="error calling index: index out of range: 5"):
        render("{{index .L 5}}", {"L": ["a"]})


def test_printf_verbs_flags_and_go_error_markers():
    data = {"S": "ab", "N": 7, "F": 3.14159, "B": True, "J": 1024.0}
    assert render('{{printf "%s|%5s|%-5s|%q" .S .S .S .S}}', data) == 'ab|   ab|ab   |"ab"'
    assert render('{{printf "%d|%03d|%+d|%x|%X|%#x" .N .N .N 255 255 255}}', data) == "7|007|+7|ff|FF|0xff"
    assert (
        render('{{printf "%.2f|%6.1f|%e|%g|%v|%t" .F .F 1000000.0 .F .B .B}}', data)
        == "3.14|   3.1|1.000000e+06|3.14159|true|true"
    )
    assert render('{{printf "%d" .J}}', data) == "1024"  # JSON number
    assert render('{{printf "100%%"}}', data) == "100%"
    assert render('{{printf "%s %s" .S}}', data) == "ab %!s(MISSING)"
    assert render('{{printf "%s" .S .N}}', data) == "ab%!(EXTRA int=7)"
    assert render('{{printf "%d" .S}}', data) == "%!d(string=ab)"
    assert render('{{printf "%v" .Missing}}', data) == "<nil>"


def test_print_and_println():
    assert render('{{print "a" 1 2 "b"}}', None) == "a1 2b"
    assert render('{{println "a" 1}}', None) == "a 1\n"


def test_comparisons_and_logic():
    d = {"N": 3, "S": "x", "E": "", "L": []}
    assert (
        render("{{eq .N 3}} {{ne .N 3}} {{lt .N 4}} {{le .N 3}} {{gt .N 3}} {{ge .N 3}}", d)
        == "true false true true false true"
    )
    assert render('{{eq .S "y" "x"}} {{not .E}} {{and .S .E}}|{{or .E .S}} {{or .E .L}}', d) == "true true |x []"
    with pytest.raises(TemplateError, match="incompatible types for comparison"):
        render('{{eq .N "3"}}', d)


# ----------------------------------------------------------------------------- control flow


@pytest.mark.parametrize(
    "value, truth",
    [
        (None, "no"),
        (False, "no"),
        (0, "no"),
        ("", "no"),
        ([], "no"),
        ({}, "no"),
        (True, "yes"),
        (1, "yes"),
        ("x", "yes"),
        ([0], "yes"),
        ({"k": 0}, "yes"),
    ],
)
def test_if_truthiness(value, truth):
    assert render("{{if .V}}yes{{else}}no{{end}}", {"V": value}) == truth


def test_else_if_chain_and_with():
    tpl = "{{if eq .N 1}}one{{else if eq .N 2}}two{{else}}many{{end}}"
    assert [render(tpl, {"N": n}) for n in (1, 2, 3)] == ["one", "two", "many"]
    assert render("{{with .Driver}}{{.IPAddress}}{{end}}", INSPECT) == "10.0.0.5"
    assert render("{{with .Nope}}x{{else}}none{{end}}", INSPECT) == "none"


def test_range_forms():
    assert render("{{range .L}}<{{.}}>{{end}}", {"L": ["a", "b"]}) == "<a><b>"
    assert render("{{range .L}}x{{else}}empty{{end}}", {"L": []}) == "empty"
    assert render("{{range .Nope}}x{{else}}empty{{end}}", {}) == "empty"
    assert render("{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}", {"M": {"b": 2, "a": 1}}) == "a=1;b=2;"
    assert render("{{range $i, $e := .L}}{{$i}}:{{$e}} {{end}}", {"L": ["x", "y"]}) == "0:x 1:y "
    assert render("{{range $e := .L}}{{$e}}{{end}}", {"L": ["x", "y"]}) == "xy"
    tpl = "{{range .L}}{{if eq . 2}}{{continue}}{{end}}{{if eq . 4}}{{break}}{{end}}{{.}}{{end}}"
    assert render(tpl, {"L": [1, 2, 3, 4, 5]}) == "13"


def test_variables_declare_assign_and_scope():
    assert render("{{$x := .Name}}[{{$x}}]", Item("n")) == "[n]"
    assert render("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", None) == "2"
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        render("{{if true}}{{$y := 1}}{{end}}{{$y}}", None)


def test_pipelines_and_parentheses():
    assert render("{{.Name | upper}}", Item("web")) == "WEB"
    assert render('{{.Name | printf "%s!"}}', Item("web")) == "web!"
    assert render("{{(index .L 1).Name}}", {"L": [Item("a"), Item("b")]}) == "b"
    assert render('{{len (index .M "l")}}', {"M": {"l": [1, 2, 3]}}) == "3"


def test_literals_and_escapes():
    assert render('{{"literal"}}', None) == "literal"
    assert render('{{"tab\\there\\n"}}', None) == "tab\there\n"
    assert render("{{`raw\\n`}}", None) == "raw\\n"
    assert render("{{'a'}} {{0x10}} {{1.5}} {{-3}} {{true}}", None) == "97 16 1.5 -3 true"


def test_trim_markers_and_comments():
    assert render("a  {{- .X -}}  \n b", {"X": 1}) == "a1b"
    assert render("a {{-3}}", None) == "a -3"  # no space after "-": a negative number, no trim
    assert render("a {{/* note */}} b", None) == "a  b"
    assert render("a\n{{- /* note */ -}}\nb", None) == "ab"


def test_compiled_template_is_reusable():
    tpl = compile_template("{{.Name}};")
    assert tpl(Item("a")) + tpl({"Name": "b"}) == "a;b;"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{foo .X}}", 'template: :1: function "foo" not defined'),
        ("{{.X", "unclosed action"),
        ("{{if .X}}a", "unexpected EOF"),
        ("a{{end}}", "unexpected {{end}}"),
        ("{{else}}", "unexpected {{else}}"),
        ("{{range .L}}{{else}}{{else}}{{end}}", "expected {{end}}"),
        ("{{break}}", "{{break}} outside {{range}}"),
        ('{{"open}}', "unterminated quoted string"),
        ("{{$nope}}", 'undefined variable "$nope"'),
        ("{{3x}}", "bad number syntax"),
        ("{{}}", "missing value for command"),
        ('{{template "x"}}', "{{template}} is not supported"),
        ("{{.X ! }}", "unexpected '!'"),
        ("line1\nline2 {{nope}}", "template: :2:"),
    ],
)
def test_parse_errors(source, message):
    with pytest.raises(TemplateError) as info:
        compile_template(source)
    assert message in str(info.value)
    assert str(info.value).startswith("template: ")


def test_execution_errors_name_the_action():
    with pytest.raises(TemplateError, match=r"template: :1: executing at <\.X 1>: can't give argument"):
        render("{{.X 1}}", {"X": 1})
    with pytest.raises(TemplateError, match="wrong number of args for json: want 1 got 2"):
        render("{{json .X .Y}}", {})
    with pytest.raises(TemplateError, match="range can't iterate over x"):
        render("{{range .S}}{{end}}", {"S": "x"})


def test_template_errors_are_usage_errors():
    assert issubclass(TemplateError, UsageError)
    with pytest.raises(UsageError):
        render("{{nope}}", None)
