"""The expression language: what it computes, and what it refuses."""

import re

import pytest
from yamlnet.compiler.errors import ExprError
from yamlnet.compiler.expr import Scope, evaluate, resolve


def ev(text, **names):
    return evaluate(text, Scope(names))


@pytest.mark.parametrize(
    "text, names, expected",
    [
        ("1 + 2 * 3", {}, 7),
        ("width * 2", {"width": 32}, 64),
        ("hidden // (2 ** i)", {"hidden": 128, "i": 2}, 32),
        ("7 / 2", {}, 3.5),
        ("-x % 3", {"x": 4}, 2),
        ("2 if i == 0 else 1", {"i": 0}, 2),
        ("2 if i == 0 else 1", {"i": 3}, 1),
        ("stride != 1 or c != p", {"stride": 1, "c": 64, "p": 64}, False),
        ("1 < x <= 3", {"x": 3}, True),
        ("not flag and true", {"flag": False}, True),
        ("min(8, max(a, 2))", {"a": 5}, 5),
        ("int(round(2.6))", {}, 3),
        ("round(3.14159, 2)", {}, 3.14),
        ("ceil(7 / 2) + floor(7 / 2)", {}, 7),
        ("abs(-3)", {}, 3),
        ("len(depths)", {"depths": [2, 2, 6, 2]}, 4),
        ("depths[-1]", {"depths": [2, 2, 6, 2]}, 2),
        ("depths[1:3]", {"depths": [2, 2, 6, 2]}, [2, 6]),
        ("table['b'][1]", {"table": {"b": [3, 4]}}, 4),
        ("[a, a * 2]", {"a": 3}, [3, 6]),
        ("'x' + name", {"name": "y"}, "xy"),
        ("3 in sizes", {"sizes": [1, 3]}, True),
        ("none", {}, None),
    ],
)
def test_evaluates(text, names, expected):
    assert ev(text, **names) == expected


def test_whole_string_keeps_type_and_mixed_string_interpolates():
    scope = Scope({"w": 16, "i": 2})
    assert resolve("${w * 2}", scope, None, "x") == 32
    assert resolve("block_${i}_${w > 8}", scope, None, "x") == "block_2_true"
    assert resolve(["${w}", {"k": "${i}"}], scope, None, "x") == [16, {"k": 2}]
    assert resolve("no expressions", scope, None, "x") == "no expressions"


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('true')", "is not a function you can call"),
        ("__import__('os')", "unknown function '__import__'"),
        ("x.__class__", "is not allowed in an expression"),
        ("(lambda: 1)()", "is not a function you can call"),
        ("[c for c in 'ab']", "is not allowed in an expression"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("widht * 2", "unknown name 'widht' (did you mean width?)"),
        ("1 / 0", "division by zero"),
        ("10 ** 100", "exponent too large"),
        ("2 ** 62 * 16", "integer result is too large"),
        ("1 +", "invalid expression"),
        ("'a' * 3", "cannot apply"),
        ("round(1, 10 ** 9)", "round() digits"),
        ("round(1.0, 99)", "round() digits"),
        ("int('nan')", "int() cannot convert"),
        ("float('inf')", "not a finite number"),
        ("xs[10]", "out of range"),
        ("t['20']", "no key '20' in 't['20']' (keys: 18, 34)"),
        ("divisible(7, 0)", "divisible(value, divisor) takes a number and a positive integer"),
        ("str([1])", "str() takes a number, a string or a bool"),
        ("min(x=1)", "takes no keyword arguments"),
        ("shape(x)", "shape() is not available"),
    ],
)
def test_refuses(text, message):
    with pytest.raises(ExprError) as info:
        evaluate(text, Scope({"width": 8, "xs": [1], "t": {"18": 1, "34": 2}}))
    assert message in str(info.value)


def test_length_and_nesting_limits():
    with pytest.raises(ExprError, match="longer than"):
        ev("1+" * 300 + "1")
    with pytest.raises(ExprError, match="nested too deeply|longer than"):
        ev("(" * 200 + "1" + ")" * 200)


def test_error_is_located():
    from yamlnet.compiler.errors import Location

    with pytest.raises(ExprError) as info:
        resolve("${nope}", Scope({}), Location("f.yaml", 3, 9), "nodes.fc.out_features")
    assert str(info.value) == "f.yaml:3:9: nodes.fc.out_features: unknown name 'nope'"


def test_size_counts_shared_lists_in_full():
    """A list that holds another twice costs twice its items to format or compare, so it
    counts twice; the count itself walks each distinct list once."""
    from yamlnet.compiler.expr import MAX_LEN, size_of

    leaf = list(range(8))
    value = leaf
    for _ in range(40):  # 8 * 2**40 items when written out
        value = [value, value]
    assert size_of(leaf) == 9
    assert size_of([leaf, leaf]) == 19
    assert size_of({"a": "xyz"}) == 5
    assert size_of(value) > MAX_LEN  # and returns at once: the count stops past the limit


def test_shared_lists_are_refused_before_they_are_walked():
    import time

    names = {"l0": list(range(8))}
    for i in range(1, 40):
        try:
            names[f"l{i}"] = ev(f"[l{i - 1}, l{i - 1}]", **names)
        except ExprError as err:
            assert "larger than 100,000 items" in str(err)
            break
    else:
        pytest.fail("2**39 nested items were accepted")
    assert 2**i * 8 > 100_000 >= 2 ** (i - 1) * 8
    start = time.process_time()
    assert ev(f"l{i - 1} == l{i - 1}[:]", **names)  # a bounded comparison
    assert time.process_time() - start < 5


def test_interpolated_string_is_bounded_as_a_whole():
    s = "a" * 60_000
    assert len(resolve("${s}-", Scope({"s": s}), None, "")) == 60_001
    with pytest.raises(ExprError, match="string is longer than 100,000 characters"):
        resolve("${s}${s}", Scope({"s": s}), None, "")
    with pytest.raises(ExprError, match="larger than 100,000 items"):
        resolve("x${l}", Scope({"l": [list(range(60_000))] * 2}), None, "")


def test_a_complex_result_is_refused():
    with pytest.raises(ExprError, match="result is a complex number"):
        ev("(-2) ** 0.25")
    with pytest.raises(ExprError, match="result is a complex number"):
        ev("x ** 0.5 * 2", x=-4)


@pytest.mark.parametrize("text, expected", [
    ("sum(depths)", 10),
    ("sum([])", 0),
    ("sum(depths[:2]) * 2", 6),
    ("log2(width)", 3.0),
    ("int(log2(width))", 3),
    ("round(log(100, 10))", 2),
    ("sqrt(width * 2)", 4.0),
    ("max(depths)", 4),
    ("min(depths)", 1),
    ("[0] * 3 + [1] * 2", [0, 0, 0, 1, 1]),
    ("2 * depths[:1]", [1, 1]),
    ("[1] * -1", []),
    ("width if width > 4 else error('too small')", 8),
])  # fmt: skip
def test_list_and_math_functions(text, expected):
    """What derived configurations need (running block counts, RegNet-style widths)."""
    assert ev(text, depths=[1, 2, 3, 4], width=8) == expected


@pytest.mark.parametrize("text, says", [
    ("sum(width)", "sum() takes a list of numbers"),
    ("sum(['a'])", "sum() takes a list of numbers"),
    ("log(0)", "log(x, base) takes a number above 0"),
    ("log(8, 1)", "log(x, base) takes a number above 0"),
    ("log2(-1)", "log2() takes a number above 0"),
    ("sqrt(-1)", "sqrt() takes a number of 0 or more"),
    ("sqrt('9')", "sqrt() takes a number of 0 or more"),
    ("[1] * 100001", "result is larger than 100,000 items"),
    ("[[0] * 1000] * 1000", "result is larger than 100,000 items, nested lists counted in full"),
    ("[1] * 2.0", "cannot apply '[1] * 2.0' to list and float"),
    ("width if width > 9 else error('width must be above 9')", "width must be above 9"),
    ("error(3)", "error() takes a message, a string"),
])  # fmt: skip
def test_list_and_math_functions_refuse_what_they_cannot_take(text, says):
    with pytest.raises(ExprError, match=re.escape(says)):
        ev(text, width=8)
