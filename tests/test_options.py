"""Method options: declared once in the method's signature, validated for the CLI and the notebooks."""
import pytest

from helpers.methods import make_method
from helpers.options import OptionError, option_specs, parse_bool, validate_options


@pytest.mark.parametrize("text,value", [("true", True), ("Yes", True), ("1", True), ("false", False),
                                        ("NO", False), ("0", False), (True, True), (0, False)])
def test_booleans_accept_the_usual_spellings(text, value):
    assert parse_bool("whiten", text) is value


@pytest.mark.parametrize("text", ["off", "on", "2", "", "tru", 3, None])
def test_any_other_boolean_spelling_is_an_error(text):
    with pytest.raises(OptionError, match="whiten.*true or false"):
        parse_bool("whiten", text)


def test_pooling_options_are_declared_by_the_signature():
    from helpers.methods import method_class

    specs = option_specs(method_class("gem"))
    assert list(specs) == ["whiten", "whiten_dim", "whiten_shrinkage", "layer"]
    assert specs["whiten"].kind == "bool" and specs["whiten_dim"].optional and specs["whiten_dim"].kind == "int"


def test_text_from_the_command_line_is_converted_to_the_declared_kinds():
    from helpers.methods import method_class

    gem = method_class("gem")
    assert validate_options(gem, {"whiten": "no"}) == {"whiten": False}
    assert validate_options(gem, {"whiten": "yes", "whiten_dim": "64", "whiten_shrinkage": "0.5"}) == {
        "whiten": True, "whiten_dim": 64, "whiten_shrinkage": 0.5}
    assert validate_options(gem, {"whiten_dim": "none"}) == {"whiten_dim": None}
    with pytest.raises(OptionError, match="whiten_dim.*integer"):
        validate_options(gem, {"whiten_dim": "sixty"})
    with pytest.raises(OptionError, match="whiten_shrinkage.*number"):
        validate_options(gem, {"whiten_shrinkage": "lots"})
    with pytest.raises(OptionError, match="unknown options.*colour.*whiten=bool"):
        validate_options(gem, {"colour": "red"})


def test_whiten_no_does_not_switch_whitening_on(backbone):
    assert make_method("gem", backbone, 128, whiten="no").whiten is False
    assert make_method("gem", backbone, 128, whiten="false").needs_training is False
    with pytest.raises(OptionError):
        make_method("gem", backbone, 128, whiten="off")


@pytest.mark.parametrize("name", ["ack", "multilayer", "roi", "clusters"])
def test_every_method_declares_its_options(name):
    from helpers.methods import method_class

    specs = option_specs(method_class(name))
    assert specs and all(spec.name == key for key, spec in specs.items())
    with pytest.raises(OptionError, match="unknown options"):
        validate_options(method_class(name), {"no_such_option": "1"})


def test_actnet_takes_the_activation_initial_values_as_options():
    from helpers.methods import method_class

    cls = method_class("actnet")
    specs = option_specs(cls)
    assert specs["activation"].choices == ("identity", "sinh", "exp", "weibull")
    assert validate_options(cls, {"activation": "exp", "beta": "2.5"}) == {"activation": "exp", "beta": 2.5}
    with pytest.raises(OptionError, match="activation.*one of"):
        validate_options(cls, {"activation": "relu"})


def test_actnet_refuses_initial_values_its_activation_lacks(backbone):
    with pytest.raises(OptionError, match="unknown options.*gamma"):
        make_method("actnet", backbone, 128, activation="exp", gamma=1.0)
    with pytest.raises(OptionError, match="numbers"):
        make_method("actnet", backbone, 128, activation="exp", beta="steep")


def test_numpy_integers_are_integers():
    import numpy as np

    from helpers.options import positive_int

    assert positive_int("k", np.int64(3)) == 3
    with pytest.raises(OptionError):
        positive_int("k", np.int64(0))
