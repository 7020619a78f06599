# The kafka-agent AMI: Amazon Linux 2023, Java, Kafka (role "kafka") or ZooKeeper (role
# "zookeeper"), the agent's static binary, its systemd units (systemd/) enabled, a default
# agent configuration, and a network setup that leaves the agent's ENI and policy routing
# alone. EBS-backed (amazon-ebs). Written for Debian's packer 1.6.6 (HCL2):
#
#   packer build -var role=kafka -var agent_binary=$(scripts/release | tail -n1) packer/kafka-agent.pkr.hcl
#   packer build -var role=zookeeper -var agent_binary=... packer/kafka-agent.pkr.hcl
#
# `packer validate` needs no AWS credentials (the source AMI is looked up only by `build`);
# scripts/lint-artifacts runs it for both roles.

variable "role" {
  type        = string
  default     = "kafka"
  description = "What the image runs: kafka (a broker) or zookeeper (an ensemble member)."
  validation {
    condition     = var.role == "kafka" || var.role == "zookeeper"
    error_message = "The role must be \"kafka\" or \"zookeeper\"."
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type        = string
  default     = "m5.large"
  description = "The build instance's type (x86_64: the agent is an x86_64 static binary)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Where the build instance runs; empty = the default VPC's choice. It must reach the Apache download location."
}

variable "source_ami" {
  type        = string
  default     = ""
  description = "A base AMI id; empty = the newest AMI matching source_ami_name. Either way it must be flagged imds-support v2.0."
}

variable "source_ami_name" {
  type        = string
  default     = "al2023-ami-2023.*-kernel-*-x86_64"
  description = "Name pattern of the base AMI (Amazon Linux 2023, x86_64)."
}

variable "source_ami_owners" {
  type    = list(string)
  default = ["amazon"]
}

variable "ssh_username" {
  type    = string
  default = "ec2-user"
}

variable "ami_name_prefix" {
  type    = string
  default = "kafka-agent"
}

variable "encrypt_boot" {
  type        = bool
  default     = true
  description = "Encrypt the AMI's root snapshot with the account's default EBS key."
}

variable "agent_binary" {
  type        = string
  default     = "/var/tmp/kafka-agent-static-target/x86_64-unknown-linux-gnu/release/kafka-agent"
  description = "The static kafka-agent binary (scripts/release prints its path); installed as /usr/local/bin/kafka-agent."
}

variable "java_package" {
  type        = string
  default     = "java-17-amazon-corretto-headless"
  description = "The dnf package that provides Java for Kafka or ZooKeeper."
}

variable "apache_mirror" {
  type        = string
  default     = "https://archive.apache.org/dist"
  description = "Base URL of the Apache distribution tree (kafka/<version>/..., zookeeper/zookeeper-<version>/...)."
}

variable "kafka_version" {
  type    = string
  default = "3.9.1"
}

variable "scala_version" {
  type    = string
  default = "2.13"
}

variable "kafka_url" {
  type        = string
  default     = ""
  description = "The Kafka binary tarball; empty = <apache_mirror>/kafka/<version>/kafka_<scala>-<version>.tgz."
}

variable "kafka_sha512" {
  type        = string
  default     = ""
  description = "Its SHA-512 (hex); empty = the .sha512 file published beside the tarball."
}

variable "zookeeper_version" {
  type    = string
  default = "3.8.4"
}

variable "zookeeper_url" {
  type        = string
  default     = ""
  description = "The ZooKeeper binary tarball; empty = <apache_mirror>/zookeeper/zookeeper-<version>/apache-zookeeper-<version>-bin.tar.gz."
}

variable "zookeeper_sha512" {
  type        = string
  default     = ""
  description = "Its SHA-512 (hex); empty = the .sha512 file published beside the tarball."
}

variable "service_uid" {
  type        = number
  default     = 2000
  description = "uid and gid of the kafka / zookeeper user: fixed, so that a volume moved to a replacement built from another image still belongs to it."
}

locals {
  stamp         = formatdate("YYYYMMDDhhmmss", timestamp())
  kafka_url     = var.kafka_url != "" ? var.kafka_url : "${var.apache_mirror}/kafka/${var.kafka_version}/kafka_${var.scala_version}-${var.kafka_version}.tgz"
  zookeeper_url = var.zookeeper_url != "" ? var.zookeeper_url : "${var.apache_mirror}/zookeeper/zookeeper-${var.zookeeper_version}/apache-zookeeper-${var.zookeeper_version}-bin.tar.gz"
  version       = var.role == "kafka" ? var.kafka_version : var.zookeeper_version
}

source "amazon-ebs" "kafka-agent" {
  region          = var.region
  instance_type   = var.instance_type
  subnet_id       = var.subnet_id
  ssh_username    = var.ssh_username
  ami_name        = "${var.ami_name_prefix}-${var.role}-${local.version}-${local.stamp}"
  ami_description = "kafka-agent ${var.role} image: ${var.role} ${local.version}, the agent and its units (packer/kafka-agent.pkr.hcl)"
  encrypt_boot    = var.encrypt_boot

  # IMDSv2 on the build instance. Packer 1.6.6's amazon-ebs has no metadata_options block
  # (added with the separate Amazon plugin: `metadata_options { http_tokens = "required" }`;
  # 1.6.6 answers "Blocks of type metadata_options are not expected here"). So the base AMI
  # must be flagged imds-support v2.0, which makes EC2 launch the build instance with
  # HttpTokens required (EC2 API reference, Image.ImdsSupport), and the first provisioner
  # below fails the build if IMDS still answers a request without a token (a v1 request).
  source_ami_filter {
    filters = merge(
      {
        name                  = var.source_ami_name
        architecture          = "x86_64"
        "root-device-type"    = "ebs"
        "virtualization-type" = "hvm"
        "imds-support"        = "v2.0"
      },
      var.source_ami == "" ? {} : { "image-id" = var.source_ami }
    )
    owners      = var.source_ami_owners
    most_recent = true
  }

  tags = {
    Name                = "${var.ami_name_prefix}-${var.role}"
    "kafka-agent-image" = var.role
    "service-version"   = local.version
    "base-ami"          = "{{ .SourceAMI }}"
  }
  run_tags = {
    Name = "packer ${var.ami_name_prefix}-${var.role}"
  }
}

build {
  sources = ["source.amazon-ebs.kafka-agent"]

  provisioner "shell" {
    inline = [
      "code=$(curl -s -o /dev/null -w '%%{http_code}' http://169.254.169.254/latest/meta-data/instance-id)",
      "if [ \"$code\" != 401 ]; then echo \"IMDS answered a request without a token with HTTP $code: the build instance does not require IMDSv2\" >&2; exit 1; fi",
      "mkdir -p /tmp/kafka-agent-bake/systemd /tmp/kafka-agent-bake/files",
    ]
  }

  provisioner "file" {
    source      = var.agent_binary
    destination = "/tmp/kafka-agent-bake/kafka-agent"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/"
    destination = "/tmp/kafka-agent-bake/systemd"
  }

  provisioner "file" {
    source      = "${path.root}/files/"
    destination = "/tmp/kafka-agent-bake/files"
  }

  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "ROLE=${var.role}",
      "JAVA_PACKAGE=${var.java_package}",
      "KAFKA_URL=${local.kafka_url}",
      "KAFKA_SHA512=${var.kafka_sha512}",
      "ZOOKEEPER_URL=${local.zookeeper_url}",
      "ZOOKEEPER_SHA512=${var.zookeeper_sha512}",
      "SERVICE_UID=${var.service_uid}",
      "BAKE_DIR=/tmp/kafka-agent-bake",
    ]
  }
}
