from converters.cli import main as tokenize_main


def test_gato_tokenize_without_command_is_usage_error():
    assert tokenize_main([]) == 2


def test_sentencepiece_fixture_has_eos(text_tokenizer):
    ids = text_tokenizer.encode("the robot arm grasps a cube", add_eos=True)
    assert ids[-1] == text_tokenizer.eos_id
    assert text_tokenizer.decode(ids) == "the robot arm grasps a cube"
