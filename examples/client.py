# The seed README's Python client, unchanged but for the server URL (SANDSTORM_URL).
import os

import requests

url = os.environ.get("SANDSTORM_URL", "http://localhost:8000")
response = requests.post(
    url + "/query",
    json={"prompt": "Create hello.py and run it"},
    stream=True,
)

for line in response.iter_lines():
    if line:
        print(line.decode())
