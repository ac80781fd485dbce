"""ls output: Go tabwriter layout, the table/format rules, JSON and quiet output, natural name order."""

import json

import pytest

from dockyard.provisioner.cli.gotemplate import TemplateError
from dockyard.provisioner.cli.tables import (
    LS_HEADERS,
    HostListItem,
    format_ls,
    go_duration,
    natural_sort_key,
    parse_ls_format,
    tabwrite,
    tabwrite_text,
)


def items():
    return [
        HostListItem(Name="web10", Active="-", DriverName="qemu", State="Stopped", DockerVersion="Unknown"),
        HostListItem(
            Name="dev",
            Active="*",
            ActiveHost=True,
            DriverName="virtualbox",
            State="Running",
            URL="tcp://192.168.99.100:2376",
            DockerVersion="v1.10.0",
        ),
        HostListItem(Name="web2", Active="", DriverName="generic", State="Timeout", ResponseTime="10s"),
        HostListItem(Name="broken", DriverName="not found", State="Error", Error="open config.json: no such file"),
    ]


# ----------------------------------------------------------------------------- tabwriter


def test_tabwrite_pads_to_widest_plus_three_with_minwidth_five_and_leaves_last_cell():
    out = tabwrite(["NAME\tX\tLAST", "a-long-name\tyy\tz"])
    assert (
        out
        == (
            "NAME" + " " * 10 + "X" + " " * 4 + "LAST\n"  # 11+3 = 14 wide; "yy"+3 = 5 = minwidth
            "a-long-name" + " " * 3 + "yy" + " " * 3 + "z\n"
        )
    )


def test_tabwrite_last_cell_is_never_padded_even_when_empty():
    assert tabwrite(["a\tb\t", "ccc\td\t"]) == "a" + " " * 5 + "b" + " " * 4 + "\nccc   d    \n"
    assert tabwrite(["a\tlong-last-cell", "b\tx"]) == "a    long-last-cell\nb    x\n"  # minwidth 5


def test_tabwrite_column_blocks_end_at_a_line_without_that_column():
    out = tabwrite(["a\tb\tc", "aaaaaaa\tbb\tc", "x", "yy\tz"])
    assert (
        out
        == (
            "a" + " " * 9 + "b" + " " * 4 + "c\n"  # 7+3 = 10, then minwidth 5
            "aaaaaaa   bb   c\n"
            "x\n"
            "yy   z\n"  # a new block: its own width (minwidth 5)
        )
    )
    # Line 2 has no second column, so the wide cell of line 1 does not widen it.
    assert tabwrite(["a\tbbbbbbbbbb\tc", "dd\te"]) == "a    bbbbbbbbbb   c\ndd   e\n"
    assert tabwrite(["aaaaaaaaaa\tb", "c\tdddddddddd\te"]) == "aaaaaaaaaa   b\nc            dddddddddd   e\n"


def test_tabwrite_empty_cells_and_code_point_widths():
    assert tabwrite(["\tx", "abc\ty"]) == "      x\nabc   y\n"
    assert tabwrite(["é\tx", "ab\ty"]) == "é    x\nab   y\n"
    assert tabwrite([]) == ""


def test_tabwrite_text_keeps_a_final_partial_line():
    assert tabwrite_text("a\tb\ncc\td") == "a    b\ncc   d"
    assert tabwrite_text("a\tb", minwidth=0, padding=1) == "a b"


# ----------------------------------------------------------------------------- ls formats


def test_default_table_sorted_naturally_and_aligned():
    out = format_ls(items())
    assert out.splitlines() == [
        "NAME     ACTIVE   DRIVER       STATE     URL                         SWARM   DOCKER    ERRORS",
        "broken            not found    Error                                                   open config.json: no such file",
        "dev      *        virtualbox   Running   tcp://192.168.99.100:2376           v1.10.0   ",
        "web2              generic      Timeout                                                 ",
        "web10    -        qemu         Stopped                                       Unknown   ",
    ]
    assert out.endswith("\n")


def test_default_format_when_fmt_is_empty_or_bare_table():
    assert format_ls(items(), "") == format_ls(items())
    assert format_ls(items(), "table") == format_ls(items())


def test_custom_table_format_gets_a_header_and_literal_tab_sequences():
    fmt = r"table {{.Name}}\t{{.State}}\t{{.ResponseTime}}"  # backslash-t typed on a command line
    assert format_ls(items()[:3], fmt) == (
        "NAME    STATE     RESPONSE\ndev     Running   \nweb2    Timeout   10s\nweb10   Stopped   \n"
    )
    # real tab characters work the same
    assert format_ls(items()[:3], fmt.replace(r"\t", "\t")) == format_ls(items()[:3], fmt)


def test_format_without_table_prints_no_header_and_no_alignment():
    assert (
        format_ls(items(), "{{.Name}}: {{.DriverName}}")
        == "broken: not found\ndev: virtualbox\nweb2: generic\nweb10: qemu\n"
    )
    assert format_ls(items()[:1], r"{{.Name}}\n{{.State}}") == "web10\nStopped\n"
    assert format_ls(items()[:1], r"{{.Name}}\t{{.State}}") == "web10\tStopped\n"


def test_header_map_renders_every_field_name():
    fields = " ".join("{{.%s}}" % name for name in LS_HEADERS)
    out = format_ls([], "table " + fields)
    assert out == (
        "NAME ACTIVE ACTIVE_HOST ACTIVE_SWARM DRIVER STATE URL SWARM_OPTIONS SWARM "
        "ENGINE_OPTIONS ERRORS DOCKER RESPONSE\n"
    )


def test_booleans_and_options_print_like_go():
    item = HostListItem(Name="m", ActiveHost=True, EngineOptions={"Labels": ["a=b"]})
    assert (
        format_ls([item], "{{.ActiveHost}} {{.ActiveSwarm}} {{.EngineOptions.Labels}} {{.SwarmOptions}}")
        == "true false [a=b] <no value>\n"
    )


def test_format_trims_spaces_around_the_template_like_docker_machine():
    assert format_ls(items()[:1], "   {{.Name}}  ") == "web10\n"


def test_quiet_prints_sorted_names_only():
    assert format_ls(items(), quiet=True) == "broken\ndev\nweb2\nweb10\n"
    assert format_ls(items(), "{{.State}}", quiet=True) == "broken\ndev\nweb2\nweb10\n"
    assert format_ls([], quiet=True) == ""


def test_json_format_is_an_array_of_item_dicts():
    data = json.loads(format_ls(items(), "json"))
    assert [row["Name"] for row in data] == ["broken", "dev", "web2", "web10"]
    assert data[1] == items()[1].to_dict()
    assert list(data[1]) == list(LS_HEADERS)
    assert json.loads(format_ls([], "json")) == []


def test_bad_format_raises_template_error():
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        format_ls(items(), "{{.Nope}}")
    with pytest.raises(TemplateError, match='function "nope" not defined'):
        parse_ls_format("table {{nope .Name}}")


def test_parse_ls_format_reports_table_mode():
    assert parse_ls_format(None)[1] is True
    assert parse_ls_format("{{.Name}}")[1] is False
    assert parse_ls_format("table {{.Name}}")[0]({"Name": "x"}) == "x\n"


# ----------------------------------------------------------------------------- ordering and durations


def test_natural_sort_matches_docker_machine_naturalsort():
    names = ["node10", "node9", "Node1", "node", "node01", "x-a", "x1", "a1b", "a1", "B", "a"]
    assert sorted(names, key=natural_sort_key) == [
        "a",
        "a1",
        "a1b",
        "B",
        "node",
        "Node1",
        "node01",
        "node9",
        "node10",
        "x1",
        "x-a",
    ]


def test_hostlistitem_to_dict_copies_options():
    item = HostListItem(Name="m", SwarmOptions={"Master": True})
    d = item.to_dict()
    d["SwarmOptions"]["Master"] = False
    assert item.SwarmOptions == {"Master": True}
    assert d["Name"] == "m" and d["ActiveHost"] is False


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (10, "10s"),
        (1.234, "1.234s"),
        (60, "1m0s"),
        (61.5, "1m1.5s"),
        (3600, "1h0m0s"),
        (3725.1, "1h2m5.1s"),
        (-2, "-2s"),
    ],
)
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text
