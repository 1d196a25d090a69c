"""Hooks for the schema-driven fuzz run of steady's API (see e2e/tests/e2e/openapi.rs).

Deploy bodies are tar archives: the fuzzer sends real bundles (an app that answers, one that
throws at start, one without index.js) as well as arbitrary bytes. A followed log never ends,
so cases that ask for one are sent with `follow=false`: they would only time out.
"""

import io
import tarfile

import schemathesis
from hypothesis import strategies as st


def _tar(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BUNDLES = [
    _tar({"index.js": "export default { fetch() { return new Response('fuzzed'); } };\n"}),
    _tar({"index.js": "throw new Error('broken at start');\n"}),
    _tar({"other.js": "export default {};\n"}),
]

schemathesis.openapi.media_type("application/x-tar", st.sampled_from(BUNDLES) | st.binary(max_size=4096))


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # Every phase (coverage too) passes here: a followed log would only time out.
    if isinstance(case.query, dict) and "follow" in case.query:
        case.query["follow"] = "false"
