#!/usr/bin/env bash
# CI: Python packages the cloud driver tests need (the lead's .ci/run calls this).
# apache-libcloud is a runtime dependency (pyproject); moto[ec2,server] runs a real EC2 API on 127.0.0.1
# inside the tests' own network namespace (it brings boto3, werkzeug and flask).
set -euo pipefail
python3 -m pip install -q 'apache-libcloud>=3.8' 'moto[ec2,server]>=5.0'
python3 -c 'import libcloud, moto, boto3, werkzeug' >/dev/null
