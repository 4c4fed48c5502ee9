# BetCycle starter policy for the infrastructure gate: a Terraform/OpenTofu plan
# (`terraform show -json plan.out`) attached to a run as `reports: { terraform_plan: … }`.
package betcycle.infrastructure

import rego.v1

changes contains rc if {
	some rc in input.resource_changes
	some action in rc.change.actions
	action in {"create", "update"}
}

public_acls := {"public-read", "public-read-write", "authenticated-read"}

# No publicly readable storage buckets.
deny contains msg if {
	some rc in changes
	rc.type == "aws_s3_bucket"
	rc.change.after.acl in public_acls
	msg := sprintf("%s: bucket ACL %q makes it publicly readable", [rc.address, rc.change.after.acl])
}

deny contains msg if {
	some rc in changes
	rc.type == "aws_s3_bucket_acl"
	rc.change.after.acl in public_acls
	msg := sprintf("%s: bucket ACL %q makes it publicly readable", [rc.address, rc.change.after.acl])
}

deny contains msg if {
	some rc in changes
	rc.type in {"google_storage_bucket_iam_member", "google_storage_bucket_iam_binding"}
	some member in object.get(rc.change.after, "members", [object.get(rc.change.after, "member", "")])
	member in {"allUsers", "allAuthenticatedUsers"}
	msg := sprintf("%s: grants %s access to a storage bucket", [rc.address, member])
}

# Required tags on taggable resources.
required_tags := {"owner", "environment"}

tag_keys(after) := {key | some key, _ in after.tags} if is_object(after.tags)

tag_keys(after) := set() if not is_object(after.tags)

deny contains msg if {
	some rc in changes
	startswith(rc.type, "aws_")
	"tags" in object.keys(rc.change.after)
	missing := required_tags - tag_keys(rc.change.after)
	count(missing) > 0
	msg := sprintf("%s: missing required tags %v", [rc.address, sort(missing)])
}
