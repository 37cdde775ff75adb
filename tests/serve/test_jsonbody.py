"""serve.jsonbody: the one accepted JSON shape, refused at the first thing that does not fit, in bounded work."""

from __future__ import annotations

import json

import pytest

from serve.errors import GatewayError
from serve.jsonbody import parse_images


def _parse(body: bytes | dict | list, max_images: int = 256, max_image_bytes: int = 10_000):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [(bytes(image.data), image.filename) for image in parse_images(raw, max_images, max_image_bytes)]


def _refused(body: bytes | dict | list, status: int, *, max_images: int = 256, max_image_bytes: int = 10_000) -> str:
    with pytest.raises(GatewayError) as err:
        _parse(body, max_images, max_image_bytes)
    assert err.value.status == status, err.value.message
    return err.value.message


def test_strings_objects_filenames_and_whitespace_are_read_in_order():
    body = {"images": ["aGk=", {"data": "YQ==", "filename": "caf\u00e9 \"1\".png"}, {"filename": None, "data": "Yg=="}]}
    assert _parse(body) == [(b"aGk=", None), (b"YQ==", 'caf\u00e9 "1".png'), (b"Yg==", None)]
    spaced = b' {\n "images" : [ "aGk=" ,\t{ "data" : "YQ==" , "filename" : null } ] }\r\n'
    assert _parse(spaced) == [(b"aGk=", None), (b"YQ==", None)]


def test_escaped_strings_are_decoded_like_json():
    body = b'{"images": ["a\\/b+c==", {"data": "\\u0059Q==", "filename": "x\\u00e9\\n.png"}]}'
    assert _parse(body) == [(b"a/b+c==", None), (b"YQ==", "x\u00e9\n.png")]
    assert _parse(body) == [(d.encode(), None) if isinstance(d, str) else (d["data"].encode(), d["filename"])
                            for d in json.loads(body)["images"]]


def test_the_first_unknown_key_is_named_and_nothing_after_it_is_read():
    message = _refused(b'{"images": ["aGk="], "k0": 0, "k1": [[[[ this is not even JSON', 422)
    assert "unknown key 'k0' at the top level" in message and "allowed: images" in message
    message = _refused(b'{"images": [{"data": "aGk=", "name": 1, garbage', 422)
    assert "unknown key 'name' at images[0]" in message
    keys = b",".join(b'"k%07d":0' % i for i in range(100_000))
    assert "'k0000000'" in _refused(b'{' + keys + b', "images": []}', 422)


@pytest.mark.parametrize("body, where", [
    ({}, "'images' is required"),
    ({"images": []}, "at least one image"),
    ([1, 2], "must be an object"),
    ({"images": "aGk="}, "'images' must be an array"),
    ({"images": [1]}, "images[0] must be a base64 string or an object"),
    ({"images": [{"filename": "a"}]}, "images[0].data is required"),
    ({"images": [{"data": 5}]}, "images[0].data (base64 image data) must be a string"),
    ({"images": [{"data": "aGk=", "filename": 7}]}, "images[0].filename must be a string"),
])
def test_wrong_shapes_are_422_naming_where(body, where):
    assert where in _refused(body, 422)


def test_repeated_keys_are_refused():
    assert "'images' appears twice" in _refused(b'{"images": ["aGk="], "images": ["aGk="]}', 422)
    assert "'data' appears twice" in _refused(b'{"images": [{"data": "a", "data": "b"}]}', 422)


@pytest.mark.parametrize("body", [b"{not json", b'{"images": ["aGk="]} trailing', b'{"images": ["aGk=', b"",
                                  b'{"images": ["aGk="]', b'{"images": ["aGk=" "YQ=="]}'])
def test_malformed_json_is_400(body):
    assert "not valid JSON" in _refused(body, 400)


def test_count_and_size_limits_are_413_when_reached():
    assert "more than 3 images" in _refused({"images": ["aGk="] * 4}, 413, max_images=3)
    assert _parse({"images": ["aGk="] * 3}, max_images=3)
    message = _refused({"images": ["aGk=", "A" * 2000]}, 413, max_image_bytes=1000)
    assert "images[1]" in message and "1000 bytes" in message
    data_url = "data:image/png;base64," + "A" * 1300
    assert _parse({"images": [data_url]}, max_image_bytes=1000)[0][0].startswith(b"data:image/png")


def test_image_data_is_a_view_of_the_body_not_a_copy():
    body = bytearray(json.dumps({"images": ["aGk=", {"data": "YQ=="}]}).encode())
    first, second = parse_images(body, 10, 100)
    assert isinstance(first.data, memoryview) and first.data.obj is body
    assert bytes(second.data) == b"YQ=="


def test_a_prefix_is_refused_only_when_its_bytes_already_decide():
    from serve.jsonbody import check_prefix

    valid = json.dumps({"images": ["aGk=", {"data": "a\\/b", "filename": None}, {"filename": "x", "data": "YQ=="}]},
                       indent=1).encode()
    for cut in range(len(valid) + 1):
        check_prefix(valid[:cut], 256, 10_000)  # no verdict on a body that may still turn out fine
    for body, status in [(b'{"images": ["aGk="], "k0": 0, "k1"', 422), (b'{"imgs": ', 422), (b'[1, 2', 422),
                         (b'{"images": [{"data": 5', 422), (b'{"images": ["' + b"A" * 2000, 413)]:
        with pytest.raises(GatewayError) as err:
            check_prefix(body, 256, 1000)
        assert err.value.status == status, (body, err.value.message)


def _embeddings(body: bytes | dict, max_images: int = 256, max_image_bytes: int = 10_000):
    from serve.jsonbody import Shape, parse_body

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        parsed = parse_body(raw, Shape.EMBEDDINGS, max_images, max_image_bytes)
    except GatewayError as err:
        return err.status, err.message
    return parsed.fields, [bytes(image.data) for image in parsed.images]


def test_openais_body_is_read_by_the_same_scanner():
    fields, images = _embeddings({"input": ["aGk=", "YQ=="], "model": "m", "dimensions": 7.0, "user": "u", "n": -1.5e3,
                                  "flag": True, "nothing": None, "encoding_format": "base64"})
    assert (fields, images) == ({"model": "m", "dimensions": 7, "encoding_format": "base64"}, [b"aGk=", b"YQ=="])
    assert _embeddings({"model": "m", "input": "aGk="})[1] == [b"aGk="]  # one image as a bare string
    for body, status, words in [
        ({"model": "m", "input": []}, 400, "input is empty"),
        ({"model": "m"}, 422, "'input' is required"),
        ({"input": "aGk="}, 422, "'model' is required"),
        ({"model": "m", "input": "aGk=", "dimensions": 7.5}, 422, "must be an integer"),
        ({"model": "m", "input": "aGk=", "dimensions": "7"}, 422, "integer or null"),
        ({"model": "m", "input": "aGk=", "encoding_format": "hex"}, 422, "encoding_format must be one of"),
        ({"model": "m", "input": "aGk=", "options": {"a": 1}}, 422, "'options' is not used by this API"),
        ({"model": "m", "input": "aGk=", **{f"k{i}": 0 for i in range(15)}}, 422, "more than 16 keys"),
        ({"model": "m", "input": ["aGk="] * 5}, 413, "more than 4 images"),
        ({"model": "m", "input": ["aGk=", "A" * 1400]}, 413, "input[1]: 1050 bytes, more than the limit of 1000"),
        (b'{"model": "m", "input": "aGk=", "n": tru}', 400, "not valid JSON"),
    ]:
        got = _embeddings(body, max_images=4, max_image_bytes=1000)
        assert got[0] == status and words in got[1], (body, got)
