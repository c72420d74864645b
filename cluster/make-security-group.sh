#!/usr/bin/env bash
# Create the security group cluster.yaml names in SecurityGroupIds: SSH from one CIDR, all traffic
# between members of the group, nothing else. Ray's own default group would allow SSH from 0.0.0.0/0.
#   cluster/make-security-group.sh <vpc-id> <your-cidr, e.g. 203.0.113.7/32> [group-name]
set -euo pipefail
vpc=${1:?usage: $0 <vpc-id> <ssh-cidr> [group-name]}
cidr=${2:?usage: $0 <vpc-id> <ssh-cidr> [group-name]}
name=${3:-sbmoe-ray}
if [[ "$cidr" == "0.0.0.0/0" || "$cidr" == "::/0" ]]; then
  echo "refusing to open SSH to the whole internet ($cidr): give your own address or network" >&2
  exit 2
fi
sg=$(aws ec2 create-security-group --group-name "$name" --description "sbmoe-ray cluster" --vpc-id "$vpc" \
     --query GroupId --output text)
aws ec2 authorize-security-group-ingress --group-id "$sg" --protocol tcp --port 22 --cidr "$cidr" >/dev/null
aws ec2 authorize-security-group-ingress --group-id "$sg" --protocol all --source-group "$sg" >/dev/null
echo "$sg   <- put this in cluster.yaml's SecurityGroupIds"
