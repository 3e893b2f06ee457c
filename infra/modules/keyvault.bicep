// Key Vault for the service-account passwords (AD, Exchange, SMTP). RBAC authorisation, soft
// delete and purge protection. The app identity gets Key Vault Secrets User and nothing else;
// the operator who runs `azd up` may get Secrets Officer so they can set the passwords.
// Passwords are never Bicep parameters: they would land in the deployment history.

param name string
param location string
param tags object = {}

@description('Principal id of the app identity (gets Key Vault Secrets User).')
param principalId string

@description('Object id of the operator who sets the passwords (gets Key Vault Secrets Officer); empty for none.')
param operatorPrincipalId string = ''

@description('Object id of the operators\' Entra group (docs/permissions.md, "Operators"): gets Key Vault Secrets User, so that plan and user can read AD as the service account. Empty for none.')
param operatorGroupObjectId string = ''

@description('Kind of principal operatorPrincipalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('default: create or update. recover: recover the soft-deleted vault of this name (after `azd down`; purge protection keeps it 90 days).')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

@description('Subnet allowed through the vault firewall when the app uses VNet integration; empty keeps the public endpoint open to Entra-authenticated callers.')
param allowedSubnetId string = ''

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  #checkov:skip=CKV_AZURE_109:Through Azure Relay the app resolves Key Vault references over the public endpoint; access is by Entra RBAC only. With VNet integration the firewall denies all but the app subnet
  #checkov:skip=CKV_AZURE_189:Same reason: public network access is what lets the app resolve references without a private endpoint
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    // "Azure Key Vault recovery management with soft delete and purge protection"
    // (learn.microsoft.com, key-vault/general/key-vault-recovery): a deleted vault keeps its name
    // until it is purged, and purge protection forbids purging before the retention ends.
    createMode: createMode
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForTemplateDeployment: false
    enabledForDiskEncryption: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: empty(allowedSubnetId) ? 'Allow' : 'Deny'
      virtualNetworkRules: empty(allowedSubnetId) ? [] : [
        {
          id: allowedSubnetId
        }
      ]
    }
  }
}

resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

// Operators read secrets (plan and user bind to AD as the service account); they never set
// them: that stays with the deployer's Key Vault Secrets Officer above.
resource operatorGroupSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorGroupObjectId)) {
  name: guid(vault.id, operatorGroupObjectId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: operatorGroupObjectId
    principalType: 'Group'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
