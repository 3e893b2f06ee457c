// Elastic Premium only: the Azure Files share the plan keeps the app's content on. Azure Files
// takes only a storage key (Microsoft documents no identity-based connection for the content
// share), so the connection string is written to Key Vault here and the app reads it through a
// Key Vault reference; it never appears as a plain app setting or a deployment output.
// Dedicated plans (the default) do not deploy this module and keep shared keys off.

@description('Storage account that hosts the share.')
param storageName string

@description('Key Vault that receives the connection string.')
param keyVaultName string

var shareName = toLower(take('content-${storageName}', 63))
var secretName = 'storage-content-connection'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageName
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: fileService
  name: shareName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource connection 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:The value is the storage key; it changes when the key is rotated and this module redeployed, not on a calendar, and an expired secret would stop the app
  parent: vault
  name: secretName
  properties: {
    contentType: 'Azure Storage connection string (Azure Files content share)'
    value: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
  }
}

output shareName string = share.name
output secretUri string = '${vault.properties.vaultUri}secrets/${secretName}'
