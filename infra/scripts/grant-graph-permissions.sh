#!/usr/bin/env bash
# Grant the service's managed identity exactly the Microsoft Graph application permissions the
# enabled features need, and (with --prune) remove any other Graph permission it holds.
#
# Run as someone who may grant admin consent for application permissions (Privileged Role
# Administrator or Global Administrator), after `azd up`, with the Azure CLI signed in to the
# tenant:  az login --tenant <tenant-id>
#
#   infra/scripts/grant-graph-permissions.sh --principal-id <object id> [options]
#
#   --principal-id ID      object (principal) id of the user-assigned identity; azd prints it
#                          as AZURE_IDENTITY_PRINCIPAL_ID (`azd env get-values`)
#   --roles                admin-role sync is on with active assignments (ROLES_ENABLED=true,
#                          ROLES_MODE=active)
#   --pim                  role sync grants PIM eligibility instead (ROLES_MODE=eligible)
#   --mail-graph           reports and alerts go through Graph sendMail (MAIL_TRANSPORT=graph)
#   --no-usage-location    Entra Connect already syncs `c` to usageLocation, so the service never
#                          has to write it: read users only
#   --prune                remove Graph permissions the identity holds that are not in the list
#   --dry-run              print what would change; change nothing
#
# Graph permissions are app roles of the Microsoft Graph service principal; they are granted by
# creating an appRoleAssignment on the identity's service principal. Bicep cannot do this.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4)); then
  echo "this script needs bash 4 or later (Azure Cloud Shell has it)" >&2
  exit 2
fi

GRAPH_APP_ID=00000003-0000-0000-c000-000000000000
GRAPH=https://graph.microsoft.com/v1.0

principal_id=""
roles=false
pim=false
mail_graph=false
usage_location=true
prune=false
dry_run=false

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --principal-id) principal_id="${2:-}"; shift 2 ;;
    --roles) roles=true; shift ;;
    --pim) pim=true; roles=true; shift ;;
    --mail-graph) mail_graph=true; shift ;;
    --no-usage-location) usage_location=false; shift ;;
    --prune) prune=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

if [[ ! "$principal_id" =~ ^[0-9a-fA-F-]{36}$ ]]; then
  echo "--principal-id: give the identity's object id (AZURE_IDENTITY_PRINCIPAL_ID)" >&2
  exit 2
fi
command -v az >/dev/null || { echo "the Azure CLI (az) is needed" >&2; exit 2; }

# ---- the permissions, each with the reason the service needs it --------------------------------
wanted=()

# Assign and replace licences in one assignLicense call (add the mapped SKU, remove the others).
wanted+=("LicenseAssignment.ReadWrite.All")

# List subscribedSkus: map SKU part numbers (ENTERPRISEPACK ...) to skuIds, check capacity
# before assigning, and report consumed/remaining units. Microsoft lists this permission as the
# least privileged one for subscribedSkus (Organization.Read.All also works, but reads more).
wanted+=("LicenseAssignment.Read.All")

# Leavers: read whether a leaver's cloud mailbox is shared yet (mailboxSettings/userPurpose)
# before its licence is removed; the least privileged permission for that call, no mail content.
wanted+=("MailboxSettings.Read")

# Leavers: read the mailbox usage report (getMailboxUsageDetail: storage used, archive), so that
# a mailbox over 50 GB or with an archive keeps its licence. Reports.Read.All is the only one.
wanted+=("Reports.Read.All")

if $usage_location; then
  # Find the synced user (onPremisesImmutableId, proxyAddresses, assignedLicenses) and set
  # usageLocation from the AD attribute `c` when it differs; Graph requires usageLocation
  # before a licence can be assigned.
  wanted+=("User.ReadWrite.All")
else
  # Find the synced user and check proxyAddresses and assignedLicenses; never writes a user.
  wanted+=("User.Read.All")
fi

if $roles && ! $pim; then
  # Read role definitions (with isPrivileged) and assignments, and create/remove active
  # directory role assignments so that role members follow the AD groups in ROLES_OU.
  wanted+=("RoleManagement.ReadWrite.Directory")
fi

if $pim; then
  # Read role definitions (with isPrivileged): PIM mode never writes active assignments, so it
  # holds the read half of role management only, not RoleManagement.ReadWrite.Directory.
  wanted+=("RoleManagement.Read.Directory")
  # Create and remove PIM eligibility (roleEligibilityScheduleRequests, adminAssign and
  # adminRemove) and read it back (roleEligibilitySchedules) when ROLES_MODE=eligible.
  wanted+=("RoleEligibilitySchedule.ReadWrite.Directory")
fi

if $mail_graph; then
  # Send the report and the error mails as MAIL_SENDER with sendMail. Mail.Send lets the app
  # send as any mailbox: restrict it to MAIL_SENDER with Exchange Online RBAC for Applications
  # (docs/permissions.md).
  wanted+=("Mail.Send")
fi

# ---- look-ups ----------------------------------------------------------------------------------
run() {
  if $dry_run; then echo "would run: $*"; else "$@"; fi
}

graph_sp_id=$(az ad sp show --id "$GRAPH_APP_ID" --query id -o tsv)
if [[ -z "$graph_sp_id" ]]; then
  echo "the Microsoft Graph service principal was not found in this tenant" >&2
  exit 1
fi

role_id() {
  # The id of the Graph app role (application permission) with this value.
  az ad sp show --id "$GRAPH_APP_ID" \
    --query "appRoles[?value=='$1' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv
}

current=$(az rest --method GET \
  --url "$GRAPH/servicePrincipals/$principal_id/appRoleAssignments" \
  --query "value[?resourceId=='$graph_sp_id'].[id, appRoleId]" -o tsv)

declare -A wanted_ids=()
for permission in "${wanted[@]}"; do
  id=$(role_id "$permission")
  if [[ -z "$id" || "$id" == "None" ]]; then
    echo "Graph has no application permission named $permission" >&2
    exit 1
  fi
  wanted_ids["$id"]="$permission"
done

# ---- grant what is missing -----------------------------------------------------------------------
for id in "${!wanted_ids[@]}"; do
  permission="${wanted_ids[$id]}"
  if grep -q "[[:space:]]$id\$" <<<"$current"; then
    echo "has      $permission"
    continue
  fi
  echo "grant    $permission"
  run az rest --method POST \
    --url "$GRAPH/servicePrincipals/$principal_id/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\": \"$principal_id\", \"resourceId\": \"$graph_sp_id\", \"appRoleId\": \"$id\"}" \
    --output none
done

# ---- report (or remove) what is not needed --------------------------------------------------------
while IFS=$'\t' read -r assignment_id app_role_id; do
  [[ -z "$assignment_id" ]] && continue
  [[ -n "${wanted_ids[$app_role_id]:-}" ]] && continue
  name=$(az ad sp show --id "$GRAPH_APP_ID" \
    --query "appRoles[?id=='$app_role_id'].value | [0]" -o tsv)
  if $prune; then
    echo "revoke   $name (not needed by the enabled features)"
    run az rest --method DELETE \
      --url "$GRAPH/servicePrincipals/$principal_id/appRoleAssignments/$assignment_id" \
      --output none
  else
    echo "extra    $name (not needed; --prune removes it)"
  fi
done <<<"$current"
