# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    """Options of the modules that read or write backups in S3-compatible storage."""

    DOCUMENTATION = r"""
options:
  bucket:
    description: The bucket the backups live in. It must exist.
    type: str
    required: true
  prefix:
    description:
      - Key prefix; each host's backups go under C(<prefix>/<host>/).
    type: str
    default: livekit
  endpoint_url:
    description:
      - URL of the S3-compatible endpoint (MinIO, Ceph RGW, Hetzner Object Storage, ...). Empty for AWS S3.
    type: str
  region:
    description: The endpoint's region.
    type: str
    default: us-east-1
  access_key:
    description:
      - Access key id. Empty to use the host's own AWS credentials (environment, instance profile).
    type: str
  secret_key:
    description: Secret access key. Never logged.
    type: str
  validate_certs:
    description:
      - Check the endpoint's TLS certificate. Set O(ca_bundle) for a private CA instead of turning this off.
    type: bool
    default: true
  ca_bundle:
    description: A CA bundle file on the host to check the endpoint's certificate with.
    type: path
requirements:
  - boto3 on the managed host (Debian package C(python3-boto3))
"""
